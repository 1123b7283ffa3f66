"""Chaos: ``kill -9`` of the pipeline worker and of the HTTP sink in the middle of a stream.

Nothing may be lost: both commit offsets only after their outputs were acknowledged (the
worker: every delivery, rejection and audit record of an event; the sink: every HTTP 2xx or
dead letter of a batch), so whatever was in flight is read again after the restart. What is
read again is delivered again with the same event id, and the endpoint, de-duplicating on
``Idempotency-Key``, ends up with exactly the set of events sent, each key in publish order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from deploy.worker import WorkerProcess
from tests.integration.chaos import (
    Accounting,
    Answer,
    LegacyEndpoint,
    Stream,
    apply_registry,
    header,
    new_system,
    read_topic,
    registry_document,
    restore_registry,
    rita_publisher,
    settle,
    start_sink,
    wait_until,
    worker_process,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.registry,
    pytest.mark.http,
    pytest.mark.chaos,
    pytest.mark.slow,
]
EVENTS = 400
RATE_PER_S = 10.0
INGRESS = "esb.ingress.rita"


async def kill_with_delivered_work_uncommitted(
    kafka: str, group: str, worker: WorkerProcess, endpoint: LegacyEndpoint, source: str
) -> set[str]:
    """``kill -9`` of ``worker`` at a moment when events it processed, and the endpoint
    processed too, are not yet committed; return those events' ids.

    The worker is frozen (``SIGSTOP``) while its group's committed offsets are compared with
    the ingress positions of what the endpoint holds: frozen, it commits nothing more, so what
    is seen then is what the next worker starts from. Until there is such work (the sink may
    still be catching up) the worker is let go on and looked at again a second later.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        os.kill(worker.process.pid, signal.SIGSTOP)
        await asyncio.sleep(0.2)  # a commit sent just before the stop is answered by then
        redone = await processed_but_uncommitted(kafka, group, source, endpoint.delivered())
        if len(redone) >= 3:
            assert worker.kill() == -9
            return redone
        os.kill(worker.process.pid, signal.SIGCONT)
        await asyncio.sleep(1.0)
    pytest.fail("no delivered event of the worker stayed uncommitted for 120 s")


async def processed_but_uncommitted(
    kafka: str, group: str, source: str, delivered: set[str]
) -> set[str]:
    """The ids of ``delivered`` (from ``source``) whose ingress offset is at or past
    ``group``'s commit."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == INGRESS}
    records = await read_topic(kafka, INGRESS, source, want=delivered, idle_s=0.5)
    return {
        header(record, "ce_id")
        for record in records
        if header(record, "ce_id") in delivered
        and record.offset >= committed.get(record.partition, 0)
    }


def _worker(kafka: str, registry: str, app_id: str, log_path: Path) -> WorkerProcess:
    # Commits every 5 s: a kill lands after several seconds of processed, uncommitted events,
    # which the next worker must read (and deliver) again.
    return worker_process(kafka, registry, log_path, app_id, commit_interval_s="5")


@pytest.mark.timeout(600)
async def test_kill_9_of_worker_and_sink_mid_stream_loses_nothing_and_duplicates_keep_ids(
    kafka: str, registry: str, applied_registry: Path, tmp_path: Path
) -> None:
    system = new_system()
    source = f"/institutions/rita/systems/{system}"
    busy = [False]  # while True the endpoint answers 503: the sink holds its batch, retrying
    endpoint = LegacyEndpoint(
        source,
        behaviour=lambda _id, _n, _data: (
            Answer(status=503, body=b"busy", headers=(("Retry-After", "1"),))
            if busy[0]
            else Answer(delay_s=0.05)
        ),
    )
    await endpoint.up()
    await apply_registry(kafka, registry, registry_document(endpoint.url), tmp_path)
    app_id = f"chaos-worker-{uuid.uuid4().hex[:8]}"
    processes: list[WorkerProcess] = []
    started = time.monotonic()
    try:
        processes.append(_worker(kafka, registry, app_id, tmp_path / "worker-1.log"))
        sink_settings = {"backoff_initial_s": "0.05", "backoff_max_s": "1"}
        processes.append(start_sink(kafka, registry, tmp_path / "sink-1.log", **sink_settings))
        async with rita_publisher(kafka, registry, system) as publisher:
            stream = Stream(publisher, keys=12, prefix=f"W{uuid.uuid4().hex[:6]}")
            publishing = asyncio.create_task(stream.run(EVENTS, RATE_PER_S))

            await wait_until(lambda: len(endpoint.delivered()) >= 80, 120, "80 deliveries")
            # The sink is killed while its batch is not delivered (the endpoint is busy): a
            # sink committing a batch before delivering it would lose that batch.
            busy[0] = True
            refused = endpoint.answered["503"]
            await wait_until(lambda: endpoint.answered["503"] >= refused + 6, 60, "503s")
            sink = processes[1]
            assert sink.kill() == -9
            sink_killed_at = len(stream.published)
            busy[0] = False
            processes.append(
                await asyncio.to_thread(
                    start_sink, kafka, registry, tmp_path / "sink-2.log", **sink_settings
                )
            )

            await wait_until(lambda: len(stream.published) >= 0.6 * EVENTS, 120, "60% sent")
            worker = processes[0]
            redone = await kill_with_delivered_work_uncommitted(
                kafka, app_id, worker, endpoint, source
            )
            worker_killed_at = len(stream.published)
            processes.append(
                await asyncio.to_thread(_worker, kafka, registry, app_id, tmp_path / "worker-2.log")
            )
            await publishing

        sent = stream.ids()
        await settle(lambda: endpoint.delivered() >= sent, 240)
        await asyncio.sleep(3)  # late duplicates, if any, are counted too
        rejected = await read_topic(kafka, "esb.rejected.rita", source, idle_s=2)
        dead = await read_topic(kafka, "esb.dlq.utumishi", source, idle_s=2)
    finally:
        for process in processes:
            process.stop()
        await endpoint.down()
        await restore_registry(kafka, registry)

    processed = endpoint.processed()
    bodies: dict[str, bytes] = {}
    for arrival in processed:  # a duplicate is the same event: same id, same bytes
        assert bodies.setdefault(arrival.event_id, arrival.body) == arrival.body
    accounting = Accounting(
        sent=sent,
        delivered=endpoint.delivered(),
        duplicates=endpoint.duplicates(),
        rejected={header(r, "ce_id") for r in [*rejected, *dead]},
        note=f"sink killed after {sink_killed_at} sent, worker after {worker_killed_at} "
        f"with {len(redone)} delivered events uncommitted; "
        f"{time.monotonic() - started:.0f}s",
    )
    accounting.check()
    assert not rejected, [header(r, "esb_reason") for r in rejected]
    assert not dead
    # What the worker had done and the endpoint had processed, but the worker had not yet
    # committed when it was killed, was read again and delivered again, under the same id.
    times = Counter(arrival.event_id for arrival in processed)
    once = {event_id: times[event_id] for event_id in redone if times[event_id] < 2}
    assert len(redone) >= 3
    assert not once, f"processed before the kill, not committed, and not delivered again: {once}"
    assert endpoint.first_processed_by_key() == stream.order_by_key()
