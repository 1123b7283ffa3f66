"""Chaos: the Kafka broker stops for 15 s in the middle of a stream and comes back on the same
data and ports.

Every process recovers by itself, without a restart: the publisher SDK (a publish waits,
or fails and is retried with the same event id), the worker, the HTTP sink, and the gateway,
which answers 503 (``broker_unavailable``, ``Retry-After``) while the broker cannot
acknowledge, never 500. A re-sent event the broker had in fact stored is refused by the
pipeline as a ``duplicate`` of itself; every event is delivered, once per id at the
endpoint.

The module has a broker and registry of its own: it stops them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.kafka.launcher import LocalBus, metadata_ready
from deploy.worker import WorkerProcess
from tests.integration.chaos import (
    Accounting,
    Answer,
    GatewayClient,
    LegacyEndpoint,
    Stream,
    apply_registry,
    header,
    new_system,
    own_bus,
    read_topic,
    registry_document,
    rita_publisher,
    settle,
    start_gateway,
    start_sink,
    worker_process,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.registry,
    pytest.mark.http,
    pytest.mark.chaos,
    pytest.mark.slow,
]
OUTAGE_S = 15.0


@pytest.fixture(scope="module")
def chaos_bus(tmp_path_factory: pytest.TempPathFactory, test_environment) -> Iterator[LocalBus]:
    yield from own_bus(tmp_path_factory.mktemp("chaos-broker-bus"), test_environment.ci)


@pytest.mark.timeout(600)
async def test_broker_down_for_15s_mid_stream_every_process_recovers_and_nothing_is_lost(
    chaos_bus: LocalBus, tmp_path: Path
) -> None:
    broker = chaos_bus.broker
    assert broker is not None
    kafka, registry = chaos_bus.bootstrap, chaos_bus.registry_url
    system = new_system()
    source = f"/institutions/rita/systems/{system}"
    # 0.2 s a request: the sink has a batch in hand when the broker stops.
    endpoint = LegacyEndpoint(source, behaviour=lambda _id, _n, _data: Answer(delay_s=0.2))
    await endpoint.up()
    await apply_registry(kafka, registry, registry_document(endpoint.url), tmp_path)
    processes: list[WorkerProcess] = []
    started = time.monotonic()
    try:
        processes.append(worker_process(kafka, registry, tmp_path / "worker.log"))
        processes.append(start_sink(kafka, registry, tmp_path / "sink.log",
                                    backoff_initial_s="0.1", backoff_max_s="2"))  # fmt: skip
        gateway = start_gateway(kafka, registry, tmp_path / "gateway.log", produce_timeout_s="5")
        processes.append(gateway)
        client = GatewayClient(f"http://127.0.0.1:{gateway.web_port}", system,
                               prefix=f"G{uuid.uuid4().hex[:6]}")  # fmt: skip
        async with rita_publisher(kafka, registry, system) as publisher:
            stream = Stream(publisher, keys=12, prefix=f"B{uuid.uuid4().hex[:6]}")
            publishing = asyncio.create_task(stream.run(250, 5.0))
            posting = asyncio.create_task(client.run(100, 2.0))
            await asyncio.sleep(12)
            down_at = time.monotonic()
            await asyncio.to_thread(broker.stop)
            assert not metadata_ready(kafka)
            await asyncio.sleep(OUTAGE_S)
            await asyncio.to_thread(broker.start)
            up_at = time.monotonic()
            await asyncio.wait_for(asyncio.gather(publishing, posting), 240)

        sent = stream.ids() | {event_id for event_id, _ in client.accepted}
        await settle(lambda: endpoint.delivered() >= sent, 240)
        await asyncio.sleep(2)
        rejected = await read_topic(kafka, "esb.rejected.rita", source, idle_s=3)
        dead = await read_topic(kafka, "esb.dlq.utumishi", source, idle_s=2)
        alive = {p.log_path.stem: p.process.poll() is None for p in processes}
        health = processes[0].health()
    finally:
        for process in processes:
            process.stop()
        await endpoint.down()

    reasons = Counter(header(r, "esb_reason") for r in rejected)
    statuses = Counter(status for _, status in client.statuses)
    accounting = Accounting(
        sent=sent,
        delivered=endpoint.delivered(),
        duplicates=endpoint.duplicates(),
        rejected={header(r, "ce_id") for r in dead},
        note=f"publisher {len(stream.published)} ({stream.retries} re-sends, longest publish "
        f"{stream.longest_publish_s:.1f}s), gateway {len(client.accepted)} (answers "
        f"{dict(statuses)}); re-sends refused as duplicate {reasons['duplicate']}; broker "
        f"down {up_at - down_at:.0f}s; {time.monotonic() - started:.0f}s",
    )
    accounting.check()
    assert not dead
    # Every process is the one started before the outage: it recovered by itself.
    assert all(alive.values()), alive
    assert health is not None
    assert health["status"] == "ok", health
    # Rejections are only re-sent copies of events that were delivered.
    assert set(reasons) <= {"duplicate"}, reasons
    assert {header(r, "ce_id") for r in rejected} <= accounting.delivered
    # The gateway said 503 while the broker could not acknowledge, never 500, and 202 again
    # after.
    assert set(statuses) <= {"202", "503"}, statuses
    assert statuses["503"] >= 1
    assert any(status == "202" for at, status in client.statuses if at > up_at)
    # Each key of the publisher's stream kept its order.
    first = endpoint.first_processed_by_key()
    assert {k: v for k, v in first.items() if k.startswith(stream.prefix)} == stream.order_by_key()
