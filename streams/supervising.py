"""N supervised copies of one process, one command: ``govesb worker`` and ``govesb connect
gateway`` with ``--processes N``.

One Python process runs one event loop on one core; processes are what use the other cores.
The command supervises its N children:

- child ``i`` (0 … N-1) runs the process's ``main(settings, slot)`` with the settings the
  command gave it; its ``/health`` has a ``process`` check (``ProcessSlot.health``: its pid,
  index, N and how often it was restarted);
- a child that exits while the command runs (a crash, ``kill -9``, out of memory) is started
  again after a backoff (1 s, doubling to 30 s; back to 1 s once a child ran 60 s);
- SIGTERM or SIGINT to the command is passed to every child, each stops as the single process
  does (in-flight work drained within ``shutdown_timeout_s``); a child still running
  ``shutdown_timeout_s`` + 10 s later is killed. The command exits 0 when every child stopped
  cleanly, 1 otherwise;
- if the command itself is killed, the kernel sends each child SIGTERM (Linux).

Children are spawned (no fork of a loop or threads): ``main`` must be picklable (a module-level
function, or a ``functools.partial`` of one), and so must the settings, which reach the child
through multiprocessing's pipe, never its environment or a log line.
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
from typing import Any, Protocol

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long starts again after the first backoff
KILL_MARGIN_S = 10.0


@dataclass(frozen=True)
class ProcessSlot:
    """Which of the command's processes this is: ``/health`` shows it."""

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


class ChildMain(Protocol):
    """What a child runs: the whole process, in the foreground, until SIGTERM."""

    def __call__(self, settings: Any, slot: ProcessSlot, /) -> None: ...


class SettingsOf(Protocol):
    """Child ``index``'s settings (its ports), and where it serves ``/health``, for the log."""

    def __call__(self, index: int, /) -> tuple[Any, str]: ...


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to this child when the command dies, even by
    # kill -9, so no child outlives the command that supervised it.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _child_main(main: ChildMain, settings: Any, slot: ProcessSlot) -> None:
    _die_with_parent()
    main(settings, slot)


@dataclass
class _Child:
    slot: ProcessSlot
    process: BaseProcess | None = None
    started: float = 0.0
    start_at: float = 0.0  # when to start it (again)
    backoff_s: float | None = None


class Supervisor:
    """Starts N processes, restarts any that dies, stops them all on SIGTERM."""

    def __init__(
        self,
        main: ChildMain,
        settings_of: SettingsOf,
        processes: int,
        *,
        name: str,
        shutdown_timeout_s: float,
    ) -> None:
        if processes < 1:
            raise ValueError("at least one process")
        self.main, self.settings_of, self.name = main, settings_of, name
        self.shutdown_timeout_s = shutdown_timeout_s
        self.children = [_Child(ProcessSlot(i, processes)) for i in range(processes)]
        self._context = multiprocessing.get_context("spawn")  # no fork of a loop or threads
        self._stopping = False

    def _start(self, child: _Child) -> None:
        index = child.slot.index
        settings, where = self.settings_of(index)
        process = self._context.Process(
            target=_child_main,
            args=(self.main, settings, child.slot),
            name=f"govesb-{self.name}-{index}",
        )
        process.start()
        child.process, child.started = process, time.monotonic()
        log.info("%s process %d started (pid %s, %s)", self.name, index, process.pid, where)

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
        log.error("%s process %d exited with %s after %.0f s; starting it again in %.0f s",
                  self.name, slot.index, code, ran, child.backoff_s)  # fmt: skip

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
        deadline = time.monotonic() + self.shutdown_timeout_s + KILL_MARGIN_S
        clean = True
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("process %s did not stop in time; killed", process.name)
                process.kill()
                process.join(5)
                clean = False
            elif process.exitcode != 0:
                log.error("process %s exited with %s", process.name, process.exitcode)
                clean = False
        return 0 if clean else 1
