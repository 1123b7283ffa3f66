"""``govesb worker --processes N``: N worker processes of one consumer group, one command.

One Python process runs one event loop on one core, and the pipeline's cost is mostly
signatures and Avro in Python; processes are what use the other cores (faust-streaming runs
one worker per process too). The command supervises its N children:

- child ``i`` (0 … N-1) is a whole ``govesb worker`` of the same ``app_id`` (so one consumer
  group: the ingress partitions are shared among them) serving ``/health`` and ``/metrics`` on
  ``web_port + i``; its ``/health`` has a ``process`` check with its pid, index, N and how often
  it was restarted;
- a child that exits while the command runs (a crash, ``kill -9``, out of memory) is started
  again, on the same port, after a backoff (1 s, doubling to 30 s; back to 1 s once a child
  ran 60 s). Meanwhile the group gives its partitions to the others, and its port does not
  answer, which a scrape or probe of that port reports; nothing it had not acknowledged is
  lost (its offsets were not committed);
- SIGTERM or SIGINT to the command is passed to every child, each stops as ``govesb worker``
  does (in-flight work drained within ``shutdown_timeout_s``); a child still running
  ``shutdown_timeout_s`` + 10 s later is killed. The command exits 0 when every child stopped
  cleanly, 1 otherwise;
- if the command itself is killed, the kernel sends each child SIGTERM (Linux).

The ingress topics need at least N partitions in all for every child to get work
(``GOVESB_TOPICS__INGRESS_PARTITIONS``, 6 per institution by default).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from streams.settings import WorkerSettings

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long starts again after the first backoff
KILL_MARGIN_S = 10.0


@dataclass(frozen=True)
class ProcessSlot:
    """Which of the command's worker processes this is: ``/health`` shows it."""

    index: int = 0
    processes: int = 1
    restarts: int = 0

    def health(self) -> dict[str, object]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "index": self.index,
            "processes": self.processes,
            "restarts": self.restarts,
        }


def backoff_s(previous_s: float | None, ran_s: float) -> float:
    """The wait before a child that ran ``ran_s`` and died is started again."""
    if previous_s is None or ran_s >= HEALTHY_AFTER_S:
        return FIRST_BACKOFF_S
    return min(MAX_BACKOFF_S, previous_s * 2)


def child_settings(settings: WorkerSettings, index: int) -> WorkerSettings:
    """Child ``index``'s settings: the same group, ``/health`` on ``web_port + index``."""
    return settings.model_copy(update={"web_port": settings.web_port + index})


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to this child when the command dies, even by
    # kill -9, so no worker outlives the command that supervised it.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _child_main(settings: WorkerSettings, loglevel: str, slot: ProcessSlot) -> None:
    _die_with_parent()
    from streams.pipeline.app import run_worker

    run_worker(settings, loglevel, slot)


@dataclass
class _Child:
    slot: ProcessSlot
    process: BaseProcess | None = None
    started: float = 0.0
    start_at: float = 0.0  # when to start it (again)
    backoff_s: float | None = None


class Supervisor:
    """Starts N worker processes, restarts any that dies, stops them all on SIGTERM."""

    def __init__(self, settings: WorkerSettings, processes: int, loglevel: str) -> None:
        if processes < 1:
            raise ValueError("at least one process")
        self.settings = settings
        self.loglevel = loglevel
        self.children = [_Child(ProcessSlot(i, processes)) for i in range(processes)]
        self._context = multiprocessing.get_context("spawn")  # no fork of a loop or threads
        self._stopping = False

    def _start(self, child: _Child) -> None:
        index = child.slot.index
        process = self._context.Process(
            target=_child_main,
            args=(child_settings(self.settings, index), self.loglevel, child.slot),
            name=f"govesb-worker-{index}",
        )
        process.start()
        child.process, child.started = process, time.monotonic()
        log.info("worker process %d started (pid %s, /health on port %d)",
                 index, process.pid, self.settings.web_port + index)  # fmt: skip

    def _reaped(self, child: _Child) -> None:
        """``child`` exited while the command runs: schedule its restart."""
        assert child.process is not None  # noqa: S101 - only started children are reaped
        code, ran = child.process.exitcode, time.monotonic() - child.started
        child.process.close()
        child.process = None
        child.backoff_s = backoff_s(child.backoff_s, ran)
        child.start_at = time.monotonic() + child.backoff_s
        slot = child.slot
        child.slot = ProcessSlot(slot.index, slot.processes, slot.restarts + 1)
        log.error("worker process %d exited with %s after %.0f s; starting it again in %.0f s",
                  slot.index, code, ran, child.backoff_s)  # fmt: skip

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; the exit code of the command."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for child in self.children:
            self._start(child)
        while not self._stopping:
            running = [c.process.sentinel for c in self.children if c.process is not None]
            # bounded, so that a signal or a due restart is seen within half a second
            if running:
                wait(running, timeout=0.5)
            else:
                time.sleep(0.5)
            now = time.monotonic()
            for child in self.children:
                if self._stopping:
                    break
                if child.process is not None and not child.process.is_alive():
                    self._reaped(child)
                if child.process is None and now >= child.start_at:
                    self._start(child)
        return self.stop()

    def stop(self) -> int:
        """SIGTERM to every child, bounded wait, kill what is left; 0 if all stopped cleanly."""
        live = [c.process for c in self.children if c.process is not None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + KILL_MARGIN_S
        clean = True
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker process %s did not stop in time; killed", process.name)
                process.kill()
                process.join(5)
                clean = False
            elif process.exitcode != 0:
                log.error("worker process %s exited with %s", process.name, process.exitcode)
                clean = False
        return 0 if clean else 1
