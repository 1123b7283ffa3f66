"""What every benchmark shares: figures with median/min/max, ratios, the bus, the report.

A benchmark module exposes ``async def run(bus: BenchBus, repeat: int) -> Section``: its
measurements as rows (each a figure, median of the repetitions with min and max) and the
JSON-ready dict of every figure. ``python -m tests.benchmarks`` (``make bench``) runs every
module against one local broker and registry, prints the tables, then one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from deploy.kafka.launcher import LauncherError, LocalBus, die_with_parent
from streams.settings import REPO_ROOT

LOGS = REPO_ROOT / ".cache" / "bench"


@dataclass
class ChildServer:
    """An HTTP server a benchmark runs in a child process (a core of its own)."""

    what: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ready_path: str  # answers 200 once the server is up

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, http: aiohttp.ClientSession, bound_s: float = 30.0) -> None:
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LauncherError(
                    f"{self.what} exited with {self.process.returncode}: "
                    f"{self.log_path.read_text()[-2000:]}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.base}{self.ready_path}") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise LauncherError(f"{self.what} did not answer in {bound_s:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_child_server(
    what: str, serve: str, port: int, *args: str, log_name: str, ready_path: str
) -> ChildServer:
    """``serve(port, *args)`` (``module.function``) in a child process; not yet ready."""
    module, function = serve.rsplit(".", 1)
    code = f"import sys; from {module} import {function} as s; s(int(sys.argv[1]), *sys.argv[2:])"
    log_path = LOGS / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(port), *args],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    return ChildServer(what, process, port, log_path, ready_path)


@dataclass(frozen=True)
class Figure:
    """One measured quantity over the repetitions."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Figure:
        if not samples:
            raise ValueError("a figure needs at least one sample")
        return cls(tuple(samples))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.samples),
            "max": max(self.samples),
            "samples": list(self.samples),
        }

    def text(self, digits: int = 2) -> str:
        """``median [min, max]``."""
        if self.median >= 100:
            return f"{self.median:,.0f} [{min(self.samples):,.0f}, {max(self.samples):,.0f}]"
        return (
            f"{self.median:.{digits}f} [{min(self.samples):.{digits}f}, "
            f"{max(self.samples):.{digits}f}]"
        )


def ratios(ours: Sequence[float], baseline: Sequence[float]) -> Figure:
    """Per-repetition ratios ours / baseline (runs paired side by side)."""
    return Figure.of([o / b for o, b in zip(ours, baseline, strict=True)])


@dataclass
class Section:
    """One benchmark's result: rows for the table, figures for the JSON line."""

    title: str
    rows: list[tuple[str, Figure, str]] = field(default_factory=list)  # label, figure, unit
    extra: dict[str, Any] = field(default_factory=dict)  # non-figure facts (counts, profile)

    def add(self, key: str, label: str, figure: Figure, unit: str) -> Figure:
        self.rows.append((label, figure, unit))
        self.extra.setdefault("_keys", {})[label] = key
        return figure

    def as_dict(self) -> dict[str, Any]:
        keys = self.extra.get("_keys", {})
        figures = {keys[label]: fig.as_dict() | {"unit": unit} for label, fig, unit in self.rows}
        facts = {k: v for k, v in self.extra.items() if k != "_keys"}
        return figures | facts


@dataclass(frozen=True)
class BenchBus:
    """Where the benchmarks' broker and registry are."""

    bootstrap: str
    registry_url: str
    broker_pid: int | None = None  # when the bench started the broker: its CPU is sampled


WARM_UP_S = 30.0
"""How long a fresh broker is driven before the first figure: its JVM compiles the produce
and fetch paths in that time (before it, the broker took 0.7-0.9 cores beside a worker that
used 0.8, and the first benchmark of a run paid for the compilation)."""


def warm_up(bootstrap: str, seconds: float = WARM_UP_S, per_s: int = 20_000) -> tuple[int, int]:
    """Produce (acks=all, idempotent, many small requests) and consume ``per_s`` records a
    second on a scratch topic for ``seconds``, then delete it; the records produced and read
    back. The rate is bounded so that the warm-up writes about 120 MB, not what the broker
    could take."""
    topic = f"bench.warm-up.{os.getpid()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=12, replication_factor=1)])[topic].result(
        30
    )
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 1})  # fmt: skip
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    value = b"x" * 200
    step_s, per_step = 0.05, max(1, int(per_s * 0.05))
    produced = read = 0
    began = time.monotonic()
    try:
        for step in range(int(seconds / step_s)):
            for n in range(per_step):
                try:
                    producer.produce(topic, value, key=str(n).encode())
                    produced += 1
                except BufferError:  # the broker is slow: let its answers drain the queue
                    producer.poll(0.1)
            producer.poll(0)
            # twice the rate: what queued while the group formed is read too
            for message in consumer.consume(2 * per_step, timeout=0.01):
                read += message.error() is None
            time.sleep(max(0.0, began + (step + 1) * step_s - time.monotonic()))
        producer.flush(30)
    finally:
        consumer.close()
        with contextlib.suppress(Exception):  # a failure above is the one to report
            admin.delete_topics([topic])[topic].result(30)
    return produced, read


@contextmanager
def bench_bus() -> Iterator[BenchBus]:
    """``GOVESB_TEST_BOOTSTRAP`` / ``GOVESB_TEST_REGISTRY`` if set, else a fresh local bus,
    warmed up (:func:`warm_up`)."""
    bootstrap = os.environ.get("GOVESB_TEST_BOOTSTRAP")
    registry_url = os.environ.get("GOVESB_TEST_REGISTRY")
    if bootstrap and registry_url:
        yield BenchBus(bootstrap, registry_url)
        return
    with LocalBus() as bus:
        print(f"[bench] warming the new broker up for {WARM_UP_S:.0f} s ...", file=sys.stderr,
              flush=True)  # fmt: skip
        produced, read = warm_up(bus.bootstrap)
        print(f"[bench] warm-up: {produced:,} records produced, {read:,} read back"
              + ("" if read else " (the consumer read nothing: the fetch path is not warm)"),
              file=sys.stderr, flush=True)  # fmt: skip
        yield BenchBus(bus.bootstrap, bus.registry_url, bus.broker.pid if bus.broker else None)


def cli_has_option(command: list[str], option: str) -> bool:
    """Whether ``govesb <command> --help`` lists ``option`` (an older tree run by ``--before``
    may not have it)."""
    helped = subprocess.run(
        [str(Path(sys.executable).with_name("govesb")), *command, "--help"],
        capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    return option in helped.stdout


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from ``/proc``; 0 if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSample:
    """CPU used by named groups of processes between :meth:`start` and :meth:`stop`, as a
    share of one core over the same wall time (2.0 = both cores of this machine)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: pids for name, pids in groups.items() if pids}
        self._began = 0.0
        self._used: dict[str, float] = {}

    def start(self) -> None:
        self._began = time.monotonic()
        self._used = {name: sum(map(cpu_seconds, pids)) for name, pids in self.groups.items()}

    def stop(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self._began)
        return {
            name: round((sum(map(cpu_seconds, pids)) - self._used[name]) / wall, 2)
            for name, pids in self.groups.items()
        }


def print_section(section: Section) -> None:
    """The section as a table: measure, median [min, max], unit."""
    print(f"\n{section.title}")
    width = max([len(label) for label, _, _ in section.rows] + [10])
    for label, figure, unit in section.rows:
        print(f"  {label:<{width}}  {figure.text():>32}  {unit}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (a supervisor's children), from ``/proc``."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree
