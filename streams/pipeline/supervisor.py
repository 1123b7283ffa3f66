"""``govesb worker --processes N``: N worker processes of one consumer group, one command.

The pipeline's cost is mostly signatures and Avro in Python; processes are what use the other
cores (faust-streaming runs one worker per process too). The command supervises its N
children with :class:`streams.supervising.Supervisor` (restart with backoff, SIGTERM to all):

- child ``i`` (0 … N-1) is a whole ``govesb worker`` of the same ``app_id`` (so one consumer
  group: the ingress partitions are shared among them) serving ``/health`` and ``/metrics`` on
  ``web_port + i``; its ``/health`` has a ``process`` check with its pid, index, N and how often
  it was restarted;
- a child that dies is started again, on the same port; meanwhile the group gives its
  partitions to the others, and its port does not answer, which a scrape or probe of that port
  reports; nothing it had not acknowledged is lost (its offsets were not committed).

The ingress topics need at least N partitions in all for every child to get work
(``GOVESB_TOPICS__INGRESS_PARTITIONS``, 6 per institution by default).
"""

from __future__ import annotations

import functools

from streams.settings import WorkerSettings
from streams.supervising import (
    FIRST_BACKOFF_S,
    HEALTHY_AFTER_S,
    MAX_BACKOFF_S,
    ProcessSlot,
    backoff_s,
)
from streams.supervising import Supervisor as ProcessSupervisor

__all__ = [
    "FIRST_BACKOFF_S",
    "HEALTHY_AFTER_S",
    "MAX_BACKOFF_S",
    "ProcessSlot",
    "Supervisor",
    "backoff_s",
    "child_settings",
]


def child_settings(settings: WorkerSettings, index: int) -> WorkerSettings:
    """Child ``index``'s settings: the same group, ``/health`` on ``web_port + index``."""
    return settings.model_copy(update={"web_port": settings.web_port + index})


def _worker_main(loglevel: str, settings: WorkerSettings, slot: ProcessSlot) -> None:
    from streams.pipeline.app import run_worker

    run_worker(settings, loglevel, slot)


class Supervisor(ProcessSupervisor):
    """Starts N worker processes, restarts any that dies, stops them all on SIGTERM."""

    def __init__(self, settings: WorkerSettings, processes: int, loglevel: str) -> None:
        def settings_of(index: int) -> tuple[WorkerSettings, str]:
            child = child_settings(settings, index)
            return child, f"/health on port {child.web_port}"

        super().__init__(
            functools.partial(_worker_main, loglevel),
            settings_of,
            processes,
            name="worker",
            shutdown_timeout_s=settings.shutdown_timeout_s,
        )
