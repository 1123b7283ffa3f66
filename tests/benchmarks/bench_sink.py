"""HTTP sink delivery rate against a bare aiohttp POST loop to the same endpoint, same run.

    python -m tests.benchmarks.bench_sink [--events N] [--repeat R]

Starts a local broker and registry (or uses GOVESB_TEST_BOOTSTRAP / GOVESB_TEST_REGISTRY),
serves a real aiohttp endpoint on loopback, and delivers the same N deliveries (16 keys) with
(a) a bare loop: aiohttp POSTs of the same requests, pre-built (CloudEvents headers and JSON
body), 16 keys in parallel, (b) the HttpSink
on deliveries as the pipeline writes them for HTTP agreements (JSON body signed by the
pipeline): read the envelope, build the CloudEvents request, POST, count, write the delivery
receipt to esb.audit; and (c) the HttpSink on Avro deliveries (a Kafka agreement's records),
which it decodes, renders as JSON and signs itself. Each pass is timed by the wall clock and
by this process's CPU time (client and endpoint live in it): ``sink_cpu_ratio`` is bare CPU
per event / sink CPU per event, which holds still when other work shares the machine.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink.delivery import HttpRequest, sign_body
from connectors.http_sink.sink import DELIVERY_CONTENT_TYPES, HttpSink
from deploy.kafka.launcher import free_port
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID
from streams.audit.chain import AuditChain
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore, encode
from streams.contract.envelope import JSON_CONTENT_TYPE, Envelope, new_envelope
from streams.contract.jsonavro import from_json, to_json_bytes
from streams.contract.signing import load_private_key
from streams.registry.model import Endpoint
from streams.settings import DEFAULT_CATALOG, PRODUCE_BATCH_BYTES, KafkaSettings
from tests.benchmarks.common import BenchBus, Figure, Section, bench_bus, print_section, ratios

KEYS = 16
BUS_KEY = load_private_key(DEMO_BUS_KEY.read_text())


async def _endpoint() -> tuple[web.AppRunner, str, list[int]]:
    count = [0]

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        count[0] += 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/in", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/in", count


async def _records(registry_url: str, n: int, rendered: bool) -> list[ConsumerRecord[bytes, bytes]]:
    import yaml

    catalog = Catalog.load()
    death = catalog.event_types["tz.go.rita.DeathRegistered"]
    samples = yaml.safe_load((DEFAULT_CATALOG.parent / "samples.yaml").read_text())
    store = SchemaStore(AsyncSchemaRegistryClient({"url": registry_url}))
    schema_id = await store.id_for(death, register=True)
    payload = from_json(death.schema, samples[death.name])
    records = []
    for index in range(n):
        key = f"70040{index % KEYS:05d}"
        envelope = new_envelope("rita", "crvs", death.name, key)
        value = encode(schema_id, death.parsed, {**payload, "entryNumber": key})
        if rendered:  # what Pipeline.deliver writes for an HTTP agreement
            value = to_json_bytes({**payload, "entryNumber": key})
            envelope = replace(envelope, content_type=JSON_CONTENT_TYPE)
            envelope = sign_body(envelope, value, BUS_KEY, DEMO_BUS_KEY_ID)
        headers = [*envelope.to_headers(), ("esb_subscription", b"bench")]
        records.append(ConsumerRecord("esb.deliver.bench", 0, index, 0, 0, key.encode(), value,
                                      None, len(key), len(value), headers))  # fmt: skip
    return records


@dataclass(frozen=True)
class Rate:
    """One pass: events per second of wall time, and CPU microseconds of this process (the
    client and the endpoint both) per event: the second holds still on a busy machine."""

    events_per_s: float
    cpu_us_per_event: float


async def timed(run: Awaitable[None], events: int) -> Rate:
    wall, cpu = time.perf_counter(), time.process_time()
    await run
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Rate(events / wall, 1e6 * cpu / events)


async def bare_loop(url: str, requests: list[tuple[bytes | None, HttpRequest]]) -> Rate:
    """POST each pre-built request; keys in parallel, each key in order."""
    by_key: dict[bytes | None, list[HttpRequest]] = defaultdict(list)
    for key, request in requests:
        by_key[key].append(request)
    async with aiohttp.ClientSession() as session:

        async def one_key(items: list[HttpRequest]) -> None:
            for request in items:
                async with session.post(url, data=request.body, headers=request.headers) as r:
                    await r.read()

        async def every_key() -> None:
            await asyncio.gather(*(one_key(items) for items in by_key.values()))

        return await timed(every_key(), len(requests))


async def sink_run(sink: HttpSink, records: list[ConsumerRecord[bytes, bytes]]) -> Rate:
    """The sink's add + flush over the same deliveries."""

    async def deliver() -> None:
        for record in records:
            sink.add(record)
        await sink.flush()

    return await timed(deliver(), len(records))


async def measure(bootstrap: str, registry_url: str, events: int, repeat: int) -> Section:
    runner, url, received = await _endpoint()
    records = await _records(registry_url, events, rendered=True)
    avro_records = await _records(registry_url, events, rendered=False)
    producer = AIOKafkaProducer(  # as build_sink makes it
        **KafkaSettings(bootstrap_servers=bootstrap).durable_producer_options(
            linger_ms=2, max_batch_size=PRODUCE_BATCH_BYTES
        )
    )
    await producer.start()
    sink = HttpSink(
        subscriber="bench",
        endpoint=Endpoint(url=url, timeout_s=10),
        session=aiohttp.ClientSession(),
        producer=producer,
        schemas=SchemaStore(AsyncSchemaRegistryClient({"url": registry_url})),
        bus_key=BUS_KEY,
        bus_key_id=DEMO_BUS_KEY_ID,
        chain=AuditChain(f"bench-sink/{uuid.uuid4()}"),  # a chain of its own per run
        concurrency=KEYS,
    )
    # The bare loop sends the very requests the sink sends (CloudEvents headers and body).
    bodies = [
        (r.key, sink.request_for(Envelope.from_headers(r.headers, accept=DELIVERY_CONTENT_TYPES),
                                 r.value, "bench"))
        for r in records
    ]  # fmt: skip
    await sink_run(sink, avro_records[: KEYS * 4])  # warm up: schema fetch, connections
    await bare_loop(url, bodies[: KEYS * 4])
    passes: dict[str, list[Rate]] = defaultdict(list)
    for _ in range(repeat):
        passes["bare"].append(await bare_loop(url, bodies))
        passes["ours"].append(await sink_run(sink, records))
        passes["avro"].append(await sink_run(sink, avro_records))
    await sink.close()
    await producer.stop()
    await runner.cleanup()
    bare, ours, avro = ([r.events_per_s for r in passes[side]] for side in ("bare", "ours", "avro"))
    cpu = {side: [r.cpu_us_per_event for r in rates] for side, rates in passes.items()}
    section = Section("4. HTTP sink delivery rate vs a bare aiohttp POST loop (same requests)")
    section.add("bare_post_events_per_s", "bare aiohttp POST loop", Figure.of(bare), "events/s")
    section.add("sink_events_per_s", "HttpSink, pipeline-rendered JSON", Figure.of(ours),
                "events/s")  # fmt: skip
    section.add("sink_ratio", "HttpSink / bare", ratios(ours, bare), "x")
    section.add("sink_avro_events_per_s", "HttpSink, Avro rendered in the sink", Figure.of(avro),
                "events/s")  # fmt: skip
    section.add("sink_avro_ratio", "HttpSink (Avro) / bare", ratios(avro, bare), "x")
    # CPU per event of this one process (client and endpoint): what the wall-clock ratio
    # tends to when this process has a core to itself; it holds on a busy machine.
    section.add("bare_post_cpu_us_per_event", "bare loop, CPU per event", Figure.of(cpu["bare"]),
                "us")  # fmt: skip
    section.add("sink_cpu_us_per_event", "HttpSink, CPU per event", Figure.of(cpu["ours"]),
                "us")  # fmt: skip
    section.add("sink_cpu_ratio", "HttpSink / bare, by CPU per event",
                ratios(cpu["bare"], cpu["ours"]), "x")  # fmt: skip
    section.add("sink_avro_cpu_ratio", "HttpSink (Avro) / bare, by CPU per event",
                ratios(cpu["bare"], cpu["avro"]), "x")  # fmt: skip
    section.extra |= {"events": events, "endpoint_requests": received[0]}
    return section


async def run(bus: BenchBus, repeat: int) -> Section:
    """2000 deliveries per repetition."""
    return await measure(bus.bootstrap, bus.registry_url, 2000, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with bench_bus() as bus:
        section = asyncio.run(measure(bus.bootstrap, bus.registry_url, args.events, args.repeat))
    print_section(section)
    print(json.dumps(section.as_dict()))


if __name__ == "__main__":
    main()
