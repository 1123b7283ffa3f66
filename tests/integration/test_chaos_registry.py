"""Chaos: the schema registry (Apicurio) stops in the middle of a stream and comes back.

Schemas already used are cached by every process, so traffic keeps flowing while the
registry is down — not merely catching up after it returns: the publisher SDK and the gateway
encode with cached schema ids, the worker decodes with cached writer schemas and encodes
Kafka deliveries with its cached delivery schemas, and the sink decodes those (utumishi
also holds a Kafka agreement here, whose Avro records its HTTP sink renders as JSON) with
cached schemas too. A sink restarted while the registry is down (nothing cached) waits for it
instead of crashing. After the registry is back (same data, same port), an event type no
process has seen yet goes through too: every registry client reconnects by itself.

The module has a broker and registry of its own: it stops the registry.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from deploy.kafka.launcher import LocalBus, registry_ready
from deploy.worker import WorkerProcess
from tests.integration.chaos import (
    BIRTH,
    DEATH,
    Accounting,
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
    wait_until,
    worker_process,
)
from tests.unit.pipeline_fixtures import sample

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.registry,
    pytest.mark.http,
    pytest.mark.chaos,
    pytest.mark.slow,
]
OUTAGE_S = 20.0


@pytest.fixture(scope="module")
def chaos_bus(tmp_path_factory: pytest.TempPathFactory, test_environment) -> Iterator[LocalBus]:
    yield from own_bus(tmp_path_factory.mktemp("chaos-registry-bus"), test_environment.ci)


@pytest.mark.timeout(600)
async def test_registry_restart_mid_stream_cached_schemas_keep_traffic_flowing(
    chaos_bus: LocalBus, tmp_path: Path
) -> None:
    apicurio = chaos_bus.registry
    assert apicurio is not None
    kafka, registry = chaos_bus.bootstrap, chaos_bus.registry_url
    system = new_system()
    source = f"/institutions/rita/systems/{system}"
    endpoint = LegacyEndpoint(source)
    await endpoint.up()
    avro = {  # a Kafka agreement: Avro on esb.deliver.utumishi, rendered by the sink
        "id": "chaos-utumishi-deaths-avro",
        "subscriber": "utumishi",
        "purpose": "Deaths as Avro records, which utumishi's HTTP sink renders as JSON.",
        "event_types": [DEATH],
        "fields": ["entryNumber", "firstName", "dateOfDeath"],
    }
    await apply_registry(kafka, registry, registry_document(endpoint.url, [avro]), tmp_path)
    agreements = ("utumishi-deaths", avro["id"])

    def delivered_to_both(ids: set[str]) -> bool:
        return all({(i, a) for i in ids} <= endpoint.deliveries(a) for a in agreements)

    processes: list[WorkerProcess] = []
    started = time.monotonic()
    try:
        processes.append(worker_process(kafka, registry, tmp_path / "worker.log"))
        processes.append(start_sink(kafka, registry, tmp_path / "sink.log"))
        gateway = start_gateway(kafka, registry, tmp_path / "gateway.log")
        processes.append(gateway)
        client = GatewayClient(f"http://127.0.0.1:{gateway.web_port}", system,
                               prefix=f"G{uuid.uuid4().hex[:6]}")  # fmt: skip
        async with rita_publisher(kafka, registry, system) as publisher:
            stream = Stream(publisher, keys=8, prefix=f"R{uuid.uuid4().hex[:6]}")
            # Warm up: every process uses the death schema once.
            await stream.run(10, 20.0)
            async with aiohttp.ClientSession() as http:
                for n in range(5):
                    await client.send(http, n)
            warm = stream.ids() | {i for i, _ in client.accepted}
            await wait_until(lambda: delivered_to_both(warm), 120, "warm-up deliveries")

            await asyncio.to_thread(apicurio.stop)
            down_at = time.monotonic()
            assert not registry_ready(registry)
            before = len(stream.published), len(client.accepted)
            await asyncio.gather(stream.run(80, 5.0, start=10), _post(client, 30, 2.0, 5))
            during = (
                {i for i, _ in stream.published[before[0] :]}
                | {i for i, _ in client.accepted[before[1] :]}
            )  # fmt: skip
            # Delivered, both ways, while the registry is still down: the caches carried them.
            await settle(lambda: delivered_to_both(during), 60)
            delivered_during_outage = {
                a: len({i for i, _ in endpoint.deliveries(a)} & during) for a in agreements
            }
            kafka_deliveries = await read_topic(kafka, "esb.deliver.nida", source, want=during)
            # A sink restarted now (a rollout, a moved pod) has nothing cached: it must wait
            # for the registry to render the Avro deliveries, not crash.
            sink_restarted_at = len(stream.published)
            processes[1].stop()
            processes[1] = start_sink(kafka, registry, tmp_path / "sink-2.log")
            await stream.run(10, 5.0, start=90)
            assert not registry_ready(registry)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

            await asyncio.to_thread(apicurio.start)
            up_at = time.monotonic()
            # A type nobody cached: needs the registry in the publisher, worker (writer and
            # delivery schema of nida-births) and nowhere else.
            birth = sample(BIRTH, entryNumber=f"B{uuid.uuid4().hex[:9]}")
            birth_id = await stream.publisher.publish(BIRTH, birth)
            await stream.run(20, 10.0, start=100)
        births = [
            r
            for r in await read_topic(kafka, "esb.deliver.nida", source, want={birth_id})
            if header(r, "ce_type") == BIRTH
        ]
        sent = stream.ids() | {i for i, _ in client.accepted}
        await settle(lambda: delivered_to_both(sent), 120)
        rejected = await read_topic(kafka, "esb.rejected.rita", source, idle_s=2)
        alive = {p.log_path.stem: p.process.poll() is None for p in processes}
    finally:
        for process in processes:
            process.stop()
        await endpoint.down()

    statuses = Counter(status for _, status in client.statuses)
    both = {i for i in endpoint.delivered() if delivered_to_both({i})}
    accounting = Accounting(
        sent=sent | {birth_id},
        delivered=both | {header(r, "ce_id") for r in births},
        duplicates=endpoint.duplicates(),
        rejected={header(r, "ce_id") for r in rejected},
        note=f"delivered = to the endpoint under both agreements (JSON and Avro); "
        f"{len(during)} sent while the registry was down ({up_at - down_at:.0f}s), of which "
        f"delivered meanwhile {delivered_during_outage}; sink restarted with an empty cache "
        f"after {sink_restarted_at} sent; gateway answers {dict(statuses)}; "
        f"publisher re-sends {stream.retries}; {time.monotonic() - started:.0f}s",
    )
    accounting.check()
    assert not rejected
    assert delivered_during_outage == dict.fromkeys(agreements, len(during))
    assert {header(r, "ce_id") for r in kafka_deliveries} >= during  # Avro, cached schema
    assert [header(r, "ce_id") for r in births] == [birth_id]
    assert set(statuses) == {"202"}, statuses  # no 503: the gateway's schema id was cached
    assert stream.retries == 0
    assert all(alive.values()), alive


async def _post(client: GatewayClient, count: int, rate_per_s: float, start: int) -> None:
    async with aiohttp.ClientSession() as http:
        began = time.monotonic()
        for n in range(count):
            await asyncio.sleep(max(0.0, began + n / rate_per_s - time.monotonic()))
            await client.send(http, start + n)
