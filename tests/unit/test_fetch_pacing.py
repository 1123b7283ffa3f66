"""When a consumer's fetches wait for fuller batches: only while it is busy (``FetchPacer``)."""

from __future__ import annotations

from types import SimpleNamespace

from streams.client.fetch_pacing import BUSY_MIN_BYTES, BUSY_WAIT_MS, FetchPacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def consumer_with_fetcher() -> SimpleNamespace:
    """What the pacer reads and writes of an aiokafka consumer: its fetcher's two settings
    (as aiokafka sets them from ``fetch_min_bytes=1, fetch_max_wait_ms=500``)."""
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=500))


def settings(consumer: SimpleNamespace) -> tuple[int, int]:
    return consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms


def feed(pacer: FetchPacer, clock: Clock, per_s: float, seconds: float, poll_s: float = 0.01):
    for _ in range(round(seconds / poll_s)):
        clock.now += poll_s
        pacer.observe(round(per_s * poll_s))


def test_a_quiet_consumer_keeps_its_own_settings() -> None:
    consumer, clock = consumer_with_fetcher(), Clock()
    pacer = FetchPacer(consumer, busy_records_per_s=400, clock=clock)
    feed(pacer, clock, per_s=200, seconds=2)  # 200 requests/s: each record at once
    assert not pacer.busy
    assert settings(consumer) == (1, 500)


def test_a_busy_consumer_waits_for_fuller_fetches_and_goes_back_when_the_load_ends() -> None:
    consumer, clock = consumer_with_fetcher(), Clock()
    pacer = FetchPacer(consumer, busy_records_per_s=400, clock=clock)
    feed(pacer, clock, per_s=1000, seconds=0.5)
    assert pacer.busy
    assert settings(consumer) == (BUSY_MIN_BYTES, BUSY_WAIT_MS)
    feed(pacer, clock, per_s=0, seconds=0.5, poll_s=0.1)  # empty polls
    assert not pacer.busy
    assert settings(consumer) == (1, 500)  # the consumer's own, as they were


def test_one_long_empty_poll_after_a_burst_ends_the_busy_spell() -> None:
    consumer, clock = consumer_with_fetcher(), Clock()
    pacer = FetchPacer(consumer, busy_records_per_s=400, clock=clock)
    feed(pacer, clock, per_s=2000, seconds=0.3)
    clock.now += 1.0  # getmany waited its whole timeout for nothing
    pacer.observe(0)
    assert settings(consumer) == (1, 500)


def test_the_rate_is_judged_per_window_not_per_poll() -> None:
    consumer, clock = consumer_with_fetcher(), Clock()
    pacer = FetchPacer(consumer, busy_records_per_s=400, window_s=0.1, clock=clock)
    pacer.observe(30)  # 30 records at once, then a quiet rest of the window: 300/s
    clock.now += 0.1
    pacer.observe(0)
    assert not pacer.busy


def test_a_consumer_not_started_yet_is_left_alone() -> None:
    consumer, clock = SimpleNamespace(), Clock()  # no fetcher before start()
    pacer = FetchPacer(consumer, busy_records_per_s=400, clock=clock)
    feed(pacer, clock, per_s=1000, seconds=0.5)
    assert not pacer.busy
    assert not hasattr(consumer, "_fetcher")
