"""The duplicate window: keyed by source and id, bounded in memory, rebuilt from its entries."""

from __future__ import annotations

import datetime as dt

import pytest

from streams.contract.reasons import EventError, Reason
from streams.pipeline.duplicates import (
    BYTES_PER_EVENT,
    DuplicateWindow,
    decode_entries,
    event_digest,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
NIDA = "/institutions/nida/systems/crvs"
RITA = "/institutions/rita/systems/crvs"
TOPIC = "esb.ingress.nida"


def refused(
    window: DuplicateWindow, source: str, event_id: str, offset: int, at: dt.datetime
) -> str:
    with pytest.raises(EventError) as error:
        window.check(source, event_id, (TOPIC, 0, offset), at)
    assert error.value.reason is Reason.DUPLICATE
    return error.value.detail


def test_the_same_id_from_another_source_is_another_event() -> None:
    window = DuplicateWindow()
    window.check(NIDA, "id-1", (TOPIC, 0, 1), NOW)
    window.check(RITA, "id-1", ("esb.ingress.rita", 0, 1), NOW)  # not a duplicate
    assert "esb.ingress.nida[0]@1" in refused(window, NIDA, "id-1", 2, NOW)


def test_the_window_holds_its_length_and_then_forgets() -> None:
    window = DuplicateWindow(window=dt.timedelta(hours=24))
    window.check(NIDA, "early", (TOPIC, 0, 1), NOW)
    for hour in range(1, 24):  # a busy day: the tables turn over every 6 hours
        window.check(NIDA, f"hour-{hour}", (TOPIC, 0, 100 + hour), NOW + dt.timedelta(hours=hour))
    refused(window, NIDA, "early", 999, NOW + dt.timedelta(hours=18))
    # Forgotten at the latest a day after the slice it was first seen in began.
    window.check(NIDA, "early", (TOPIC, 0, 1000), NOW + dt.timedelta(hours=24, seconds=1))
    refused(window, NIDA, "hour-23", 2000, NOW + dt.timedelta(hours=24, seconds=2))


def test_past_max_ids_the_oldest_slice_goes_first_and_reach_says_so() -> None:
    window = DuplicateWindow(window=dt.timedelta(hours=24), max_ids=4_000)
    for n in range(10_000):  # 10,000 events in 10,000 s: more than the window can hold
        window.check(NIDA, f"id-{n}", (TOPIC, 0, n), NOW + dt.timedelta(seconds=n))
    end = NOW + dt.timedelta(seconds=10_000)
    assert window.size <= 4_000
    refused(window, NIDA, "id-9999", 20_000, end)
    window.check(NIDA, "id-0", (TOPIC, 0, 20_001), end)  # forgotten: the oldest slice went
    assert 2_000 <= window.reach_s(end) < 10_000  # far less than the 24 h asked for


def test_events_restored_from_their_entries_are_duplicates_after_a_restart() -> None:
    before = DuplicateWindow()
    for n in range(500):
        before.check(NIDA, f"id-{n}", (TOPIC, 1, n), NOW)
    packed = before.drain_accepted()
    assert len(packed) == 500 * 16
    assert before.drain_accepted() == b""  # drained

    after = DuplicateWindow()  # a new process
    after.remember(decode_entries(packed), NOW)
    after.check(NIDA, "id-7", (TOPIC, 1, 7), NOW + dt.timedelta(minutes=1))  # a re-read
    assert "esb.ingress.nida[1]@7" in refused(after, NIDA, "id-7", 501, NOW)  # a re-send
    assert after.drain_accepted() == b""  # restored entries are not written again


def test_malformed_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="16-byte"):
        decode_entries(b"\x00" * 17)


def test_the_memory_per_event_is_what_the_docs_say() -> None:
    window = DuplicateWindow(window=dt.timedelta(hours=24), max_ids=400_000)
    for n in range(100_000):
        window.check(NIDA, str(n), (TOPIC, 0, n), NOW)
    table = window._tables[-1]
    assert table.count == 100_000
    assert table.slots * 16 / (window.max_ids // window.generations) == pytest.approx(
        BYTES_PER_EVENT, rel=0.01
    )
    assert pytest.approx(21.33, abs=0.01) == BYTES_PER_EVENT


def test_digests_spread_over_the_table() -> None:
    slots = 1024
    used = {event_digest(NIDA, str(n)) % slots for n in range(512)}
    assert len(used) > 350  # random placement: ~ 512 * (1 - e^-0.5) ≈ 403 distinct slots
