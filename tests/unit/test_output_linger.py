"""When the worker's outputs go without their linger: on a quiet bus only (``Quiet``)."""

from __future__ import annotations

from streams.pipeline.writer import BUSY_EVENTS_PER_LINGER, Quiet


def test_a_lone_event_with_nothing_waiting_goes_at_once() -> None:
    quiet = Quiet(linger_s=0.008)
    assert quiet.after_event(100.0, nothing_waiting=True)
    assert quiet.after_event(100.1, nothing_waiting=True)  # 100 ms later: quiet again


def test_an_event_with_others_waiting_keeps_its_linger() -> None:
    quiet = Quiet(linger_s=0.008)
    assert not quiet.after_event(100.0, nothing_waiting=False)


def test_a_stream_of_events_keeps_batching_even_when_the_queue_runs_dry() -> None:
    quiet = Quiet(linger_s=0.008)
    at = [100.0 + i * 0.0005 for i in range(40)]  # 2,000 events/s, the queue empty each time
    sent_at_once = [quiet.after_event(t, nothing_waiting=True) for t in at]
    # each 8 ms window: its first few events go at once, the rest wait out the linger
    assert sent_at_once[:BUSY_EVENTS_PER_LINGER] == [True] * BUSY_EVENTS_PER_LINGER
    assert sent_at_once.count(False) >= len(at) // 2


def test_requests_at_200_per_s_are_quiet() -> None:
    quiet = Quiet(linger_s=0.008)
    # 200 requests/s are 400 events/s (requests and answers): 3.2 per 8 ms window
    assert all(quiet.after_event(100.0 + i * 0.0025, nothing_waiting=True) for i in range(400))
