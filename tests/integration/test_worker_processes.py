"""``govesb worker --processes 2``: two worker processes of one group, one command."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.kafka.launcher import LauncherError
from deploy.worker import WorkerProcess, start_worker, worker_processes
from tests.integration.test_pipeline import _collect, _publisher
from tests.unit.pipeline_fixtures import sample

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]

BOUND_S = 90.0


def _assigned(worker: WorkerProcess) -> int:
    body = worker.health()
    return int(body["checks"]["partitions"]["assigned"]) if body else 0


def _process_check(worker: WorkerProcess) -> dict[str, Any]:
    body = worker.health()
    return dict(body["checks"]["process"]) if body else {}


async def _until(what: str, condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a /health read) until it holds, at most BOUND_S."""
    deadline = asyncio.get_running_loop().time() + BOUND_S
    while True:
        if await asyncio.to_thread(condition):
            return
        assert asyncio.get_running_loop().time() < deadline, f"not within {BOUND_S:.0f} s: {what}"
        await asyncio.sleep(0.5)


@pytest.fixture
def two_processes(
    kafka: str, registry: str, applied_registry: Path, tmp_path: Path
) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """``govesb worker --processes 2``, ready when its first process holds partitions; each
    process as its own port shows it."""
    try:
        command = start_worker(
            kafka,
            registry,
            tmp_path / "worker.log",
            app_id=f"test-processes-{uuid.uuid4().hex[:8]}",
            extra_env={"GOVESB_COMMIT_INTERVAL_S": "0.5"},
            processes=2,
        )
    except LauncherError as error:
        pytest.fail(str(error))
    first, second = worker_processes(command, 2)
    yield first, second
    command.stop()


async def test_two_processes_share_the_partitions_survive_a_kill_and_stop_on_sigterm(
    kafka: str, registry: str, two_processes: tuple[WorkerProcess, WorkerProcess]
) -> None:
    first, second = two_processes
    await _until(
        "both processes hold partitions", lambda: bool(_assigned(first) and _assigned(second))
    )
    one, two = _process_check(first), _process_check(second)
    assert (one["index"], one["processes"], two["index"], two["processes"]) == (0, 2, 1, 2)
    assert one["pid"] != two["pid"] != first.process.pid

    ids: set[str] = set()
    async with _publisher(kafka, registry, "nida") as nida:
        for n in range(60):
            citizen = sample("tz.go.nida.CitizenRegistered", nin=f"2000020200000000{n:04d}")
            ids.add(await nida.publish("tz.go.nida.CitizenRegistered", citizen))
        records = await _collect(kafka, ["esb.deliver.tra"], ids, wait_s=BOUND_S)
        assert {dict(r.headers)["ce_id"].decode() for r in records} == ids
        # Each process handled a share of the batch: its own /metrics counts it.
        handled = [_routed(first), _routed(second)]
        assert all(handled), handled
        assert sum(handled) >= len(ids)

        # A child killed outright is started again on its port; nothing is lost meanwhile.
        os.kill(two["pid"], signal.SIGKILL)
        more: set[str] = set()
        for n in range(60, 100):
            citizen = sample("tz.go.nida.CitizenRegistered", nin=f"2000020200000000{n:04d}")
            more.add(await nida.publish("tz.go.nida.CitizenRegistered", citizen))
    await _until(
        "the killed process is back with its partitions",
        lambda: _process_check(second).get("restarts") == 1 and bool(_assigned(second)),
    )
    assert _process_check(second)["pid"] != two["pid"]
    assert _process_check(first)["restarts"] == 0
    records = await _collect(kafka, ["esb.deliver.tra"], more, wait_s=BOUND_S)
    assert {dict(r.headers)["ce_id"].decode() for r in records} == more

    # SIGTERM to the command stops both children and the command exits 0.
    pids = [_process_check(first)["pid"], _process_check(second)["pid"]]
    code, took = await asyncio.to_thread(first.stop)
    assert code == 0, first.log_path.read_text()[-3000:]
    assert took < 40
    assert not [pid for pid in pids if _running(pid)], "a child outlived the command"
    assert first.health() is None
    assert second.health() is None


def _routed(worker: WorkerProcess) -> float:
    """Events this process routed for nida, from its /metrics."""
    total = 0.0
    for line in worker.metrics().splitlines():
        if (
            line.startswith("govesb_pipeline_events_total{")
            and 'outcome="routed"' in line
            and 'publisher="nida"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
