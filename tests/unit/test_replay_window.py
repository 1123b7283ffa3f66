"""The gateway's memory of accepted GovESB pushes: a replay within 24 h is refused."""

from __future__ import annotations

from connectors.gateway.govesb import ReplayWindow


def test_a_push_is_remembered_for_the_window_and_then_forgotten() -> None:
    window = ReplayWindow(window_s=60)
    assert not window.seen("sig-a", 0)
    window.add("sig-a", 0)
    window.add("sig-b", 30)
    assert window.seen("sig-a", 59.9)
    assert not window.seen("sig-a", 60)  # expired, and pruned from the front
    assert window.seen("sig-b", 60)
    assert not window.seen("sig-b", 90)


def test_past_its_bound_the_oldest_are_forgotten_first() -> None:
    window = ReplayWindow(window_s=3600, max_entries=1000)
    for n in range(5000):
        window.add(f"sig-{n}", n * 0.1)
    assert window.seen("sig-4999", 500)
    assert not window.seen("sig-0", 500)
    assert len(window._accepted) < 1000
