"""The gateway's one rate-limit mechanism: a leaky bucket per key, in bounded memory."""

from __future__ import annotations

import pytest

from connectors.gateway.auth import RateLimit


async def test_a_key_gets_its_burst_then_waits_one_refill() -> None:
    limit = RateLimit(burst=3, per_s=0.25)  # 3 at once, then one every 4 s
    assert [await limit.take("nida") for _ in range(5)] == [0, 0, 0, 4, 4]
    assert limit.retry_after("nida") == 4
    assert await limit.take("rita") == 0  # another key has its own bucket


async def test_the_keys_held_are_bounded_however_many_are_invented() -> None:
    limit = RateLimit(burst=10, per_s=1 / 6, max_keys=1_000)
    for n in range(5_000):
        await limit.take(f"198.51.100.{n}")
    assert len(limit) == 1_000


@pytest.mark.parametrize(("burst", "per_s"), [(0, 1.0), (5, 0.0), (5, -1.0)])
def test_a_limit_that_allows_nothing_is_refused(burst: float, per_s: float) -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimit(burst, per_s)
