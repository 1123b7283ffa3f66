"""HTTP sink delivery rate against a bare aiohttp POST loop to the same endpoint, same run.

    python -m tests.benchmarks.bench_sink [--events N] [--repeat R]

Starts a local broker and registry (or uses GOVESB_TEST_BOOTSTRAP / GOVESB_TEST_REGISTRY),
serves a real aiohttp endpoint on loopback, and delivers the same N deliveries (16 keys) with
(a) a bare loop: aiohttp POSTs of pre-built JSON bodies, 16 keys in parallel, and (b) the
HttpSink: decode the Avro delivery, build the CloudEvents request, sign it with the bus key,
POST, write the delivery receipt to esb.audit. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import defaultdict
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink import HttpSink
from deploy.kafka.launcher import LocalBus, free_port
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID
from streams.audit import AuditChain
from streams.catalog import Catalog
from streams.codec import SchemaStore, encode
from streams.envelope import new_envelope
from streams.jsonavro import from_json, to_json
from streams.registry_model import Endpoint
from streams.settings import DEFAULT_CATALOG
from streams.signing import load_private_key

KEYS = 16


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


async def _records(registry_url: str, n: int) -> list[ConsumerRecord[bytes, bytes]]:
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
        headers = [*envelope.to_headers(), ("esb_subscription", b"bench")]
        records.append(ConsumerRecord("esb.deliver.bench", 0, index, 0, 0, key.encode(), value,
                                      None, len(key), len(value), headers))  # fmt: skip
    return records


async def bare_loop(url: str, bodies: list[tuple[bytes, bytes]]) -> float:
    """POST each body; keys in parallel, each key in order; return events/s."""
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for key, body in bodies:
        by_key[key].append(body)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:

        async def one_key(items: list[bytes]) -> None:
            for body in items:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()

        await asyncio.gather(*(one_key(items) for items in by_key.values()))
    return len(bodies) / (time.perf_counter() - started)


async def sink_run(sink: HttpSink, records: list[ConsumerRecord[bytes, bytes]]) -> float:
    """The sink's add + flush over the same deliveries; return events/s."""
    started = time.perf_counter()
    for record in records:
        sink.add(record)
    await sink.flush()
    return len(records) / (time.perf_counter() - started)


async def main_async(bootstrap: str, registry_url: str, events: int, repeat: int) -> dict[str, Any]:
    runner, url, received = await _endpoint()
    records = await _records(registry_url, events)
    catalog = Catalog.load()
    death = catalog.event_types["tz.go.rita.DeathRegistered"]
    import io

    import fastavro

    bodies = []
    for record in records:
        body = io.BytesIO(record.value)
        body.seek(5)
        payload = fastavro.schemaless_reader(body, death.parsed, None)
        bodies.append((record.key, json.dumps(to_json(payload), separators=(",", ":")).encode()))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2
    )
    await producer.start()
    sink = HttpSink(
        subscriber="bench",
        endpoint=Endpoint(url=url, timeout_s=10),
        session=aiohttp.ClientSession(),
        producer=producer,
        schemas=SchemaStore(AsyncSchemaRegistryClient({"url": registry_url})),
        bus_key=load_private_key(DEMO_BUS_KEY.read_text()),
        bus_key_id=DEMO_BUS_KEY_ID,
        chain=AuditChain("bench"),
        concurrency=KEYS,
    )
    await sink_run(sink, records[: KEYS * 4])  # warm up: schema fetch, connections
    await bare_loop(url, bodies[: KEYS * 4])
    bare, ours = [], []
    for _ in range(repeat):
        bare.append(await bare_loop(url, bodies))
        ours.append(await sink_run(sink, records))
    await sink.close()
    await producer.stop()
    await runner.cleanup()
    ratios = [o / b for o, b in zip(ours, bare, strict=True)]
    return {
        "events": events,
        "repetitions": repeat,
        "bare_post_events_per_s": statistics.median(bare),
        "sink_events_per_s": statistics.median(ours),
        "sink_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "endpoint_requests": received[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bootstrap = os.environ.get("GOVESB_TEST_BOOTSTRAP")
    registry_url = os.environ.get("GOVESB_TEST_REGISTRY")
    bus = None
    if not (bootstrap and registry_url):
        bus = LocalBus().start()
        bootstrap, registry_url = bus.bootstrap, bus.registry_url
    try:
        result = asyncio.run(main_async(bootstrap, registry_url, args.events, args.repeat))
    finally:
        if bus is not None:
            bus.stop()
    ratio = result["sink_ratio"]
    print(f"{'side':<22}{'events/s (median)':>20}")
    print(f"{'bare aiohttp POST loop':<22}{result['bare_post_events_per_s']:>20,.0f}")
    print(f"{'HttpSink':<22}{result['sink_events_per_s']:>20,.0f}")
    print(f"ratio {ratio['median']:.2f} [min {ratio['min']:.2f}, max {ratio['max']:.2f}]")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
