"""The pure parts of ``govesb worker --processes N``: ports, restart backoff, /health."""

from __future__ import annotations

import os

from streams.pipeline.supervisor import (
    FIRST_BACKOFF_S,
    HEALTHY_AFTER_S,
    MAX_BACKOFF_S,
    ProcessSlot,
    backoff_s,
    child_settings,
)
from streams.settings import WorkerSettings


def test_each_child_serves_health_on_its_own_port_in_the_same_group() -> None:
    settings = WorkerSettings(web_port=7000, app_id="govesb-pipeline")
    children = [child_settings(settings, i) for i in range(3)]
    assert [c.web_port for c in children] == [7000, 7001, 7002]
    assert {c.app_id for c in children} == {"govesb-pipeline"}


def test_a_child_dying_again_and_again_waits_longer_up_to_the_cap() -> None:
    waits = []
    previous = None
    for _ in range(8):
        previous = backoff_s(previous, ran_s=2.0)
        waits.append(previous)
    assert waits[:4] == [FIRST_BACKOFF_S, 2 * FIRST_BACKOFF_S, 4 * FIRST_BACKOFF_S, 8.0]
    assert waits[-1] == MAX_BACKOFF_S


def test_a_child_that_ran_a_while_before_dying_starts_again_soon() -> None:
    assert backoff_s(MAX_BACKOFF_S, ran_s=HEALTHY_AFTER_S) == FIRST_BACKOFF_S


def test_health_names_the_process_and_its_restarts() -> None:
    assert ProcessSlot(1, 2, 3).health() == {
        "ok": True,
        "pid": os.getpid(),
        "index": 1,
        "processes": 2,
        "restarts": 3,
    }
