"""``make demo``: the bus end to end on this machine.

1. Start a real Kafka broker and Apicurio registry from the cached Maven jars.
2. Register the catalogue's schemas and apply ``deploy/registry.example.yaml``.
3. Start the pipeline worker (``govesb worker``) and wait until it holds its partitions.
4. Publish a mixed stream from several institutions, signed with their demo keys, with some
   invalid events among them (tampered, unknown key, wrong topic, repeated id, not Avro).
5. Show, per subscriber, what arrived (and which fields), and per publisher what was
   rejected and why; verify the audit chain; stop everything that was started.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from rich.console import Console
from rich.table import Table

from deploy.demo_legacy import (
    PayrollEndpoint,
    legacy_flow,
    registry_with_endpoint,
    start_connectors,
)
from deploy.kafka.launcher import REPO, LauncherError, LocalBus, free_port
from deploy.worker import WorkerProcess, start_worker
from streams.audit_read import verify_topic
from streams.catalog import Catalog
from streams.codec import SchemaStore
from streams.consuming import assign_topics
from streams.governance import register_catalog
from streams.jsonavro import from_json
from streams.publisher import Publisher
from streams.registry_model import BusRegistry, load_registry
from streams.registry_sync import apply_registry
from streams.routing import route
from streams.settings import KafkaSettings, SchemaRegistrySettings, TopicSettings
from streams.signing import load_private_key
from streams.tail import describe_record

REGISTRY_YAML = REPO / "deploy" / "registry.example.yaml"
KEYS = REPO / "deploy" / "demo-keys"
BUS_KEY_ID = "ega-d06f8e0a5d19"
EXPECTED: set[tuple[str, str]] = set()  # (event id, agreement) the routing rules call for


async def publish_mixed_stream(
    registry: BusRegistry, kafka: KafkaSettings, schema_registry: SchemaRegistrySettings
) -> tuple[set[str], dict[str, str]]:
    """Good events from every owner plus bad ones; returns (good ids, bad id -> expected reason)."""
    catalog = registry.catalog
    samples = yaml.safe_load((catalog.path.parent / "samples.yaml").read_text())
    good: set[str] = set()
    bad: dict[str, str] = {}
    subscriptions = list(registry.subscriptions.values())
    raw = AIOKafkaProducer(**kafka.aiokafka_options(), acks="all", enable_idempotence=True)
    await raw.start()
    try:
        for event_type in catalog:
            institution = registry.institutions[event_type.owner]
            key = load_private_key((KEYS / f"{institution.id}.key.pem").read_text())
            async with Publisher.connect(
                institution=institution.id,
                system=institution.systems[0],
                key_id=institution.keys[0].id,
                key=key,
                kafka=kafka,
                schema_registry=schema_registry,
                catalog=catalog,
            ) as publisher:
                base = from_json(event_type.schema, samples[event_type.name])
                for n in range(3):
                    payload = dict(base)
                    if event_type.name == "tz.go.tra.TaxPaymentReceived" and n == 0:
                        payload["taxType"] = "STAMP_DUTY"  # one that ardhi's agreement wants
                    if event_type.name == "tz.go.rita.DeathRegistered" and n == 2:
                        payload["deceasedNin"] = None  # filtered out: no NIN to act on
                    event_id = await publisher.publish(event_type.name, payload)
                    good.add(event_id)
                    EXPECTED.update(
                        (event_id, s.id) for s in route(event_type.name, payload, subscriptions)
                    )
                if institution.id not in ("nida", "tra", "brela"):
                    continue
                # Invalid events from this publisher, sent as a broken system would.
                schema_id = await publisher._schemas.id_for(event_type)
                event = publisher.prepare(event_type, schema_id, base)
                headers = dict(event.headers)
                if institution.id == "nida":
                    again = publisher.prepare(
                        event_type, schema_id, base, event_id=next(iter(good))
                    )
                    await raw.send_and_wait(again.topic, again.value, key=again.key,
                                            headers=again.headers)  # fmt: skip
                    bad[again.envelope.id] = "duplicate"
                    headers["ce_sigkeyid"] = b"nida-000000000000"
                    bad[event.envelope.id] = "unknown-key"
                    value = event.value
                elif institution.id == "tra":
                    tampered = bytearray(event.value)
                    tampered[-2] ^= 1
                    value = bytes(tampered)
                    bad[event.envelope.id] = "bad-signature"
                else:
                    value = b'{"companyName": "not Avro"}'
                    bad[event.envelope.id] = "wire-format"
                await raw.send_and_wait(
                    event.topic, value, key=event.key, headers=list(headers.items())
                )
        rita = load_private_key((KEYS / "rita.key.pem").read_text())
        async with Publisher.connect(
            institution="rita", system="crvs", key_id=registry.institutions["rita"].keys[0].id,
            key=rita, kafka=kafka, schema_registry=schema_registry, catalog=catalog,
        ) as publisher:  # fmt: skip
            death = catalog.event_types["tz.go.rita.DeathRegistered"]
            event = publisher.prepare(
                death, await publisher._schemas.id_for(death),
                from_json(death.schema, samples[death.name]),
            )  # fmt: skip
            await raw.send_and_wait("esb.ingress.nida", event.value, key=event.key,
                                    headers=event.headers)  # fmt: skip
            bad[event.envelope.id] = "source-mismatch"
    finally:
        await raw.stop()
    return good, bad


async def collect(
    kafka: KafkaSettings, topics: list[str], ids: set[str], wait_s: float
) -> list[Any]:
    """Records of ``topics`` whose ce_id is in ``ids``; stops when nothing new comes."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None)
    await consumer.start()
    found: list[Any] = []
    try:
        await assign_topics(consumer, topics)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < wait_s:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for record in batch:
                    if dict(record.headers).get("ce_id", b"").decode() in ids:
                        found.append(record)
                        quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return found


async def show(
    console: Console, bus: LocalBus, registry: BusRegistry, worker: WorkerProcess
) -> int:
    """Publish, then report what arrived where; return the exit code."""
    kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
    schema_registry = SchemaRegistrySettings(url=bus.registry_url)
    good, bad = await publish_mixed_stream(registry, kafka, schema_registry)
    console.print(f"published {len(good)} valid and {len(bad)} invalid events")

    subscribers = sorted({s.subscriber for s in registry.document.subscriptions})
    deliveries = await collect(kafka, [f"esb.deliver.{s}" for s in subscribers], good, 4)
    store = SchemaStore(AsyncSchemaRegistryClient(schema_registry.client_config()))
    arrived: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for record in deliveries:
        agreement = dict(record.headers)["esb_subscription"].decode()
        arrived[(record.topic.removeprefix("esb.deliver."), agreement)].append(record)
    table = Table(title="delivered, per subscriber (only the fields each agreement allows)")
    for column in ("subscriber", "agreement", "events", "fields delivered (masked*)"):
        table.add_column(column)
    for (subscriber, agreement), records in sorted(arrived.items()):
        payload = (await describe_record(records[0], store))["payload"]
        mask = set(registry.subscriptions[agreement].mask)
        fields = ", ".join(f + ("*" if f in mask else "") for f in payload)
        table.add_row(subscriber, agreement, str(len(records)), fields)
    console.print(table)

    publishers = sorted(registry.institutions)
    rejections = await collect(kafka, [f"esb.rejected.{p}" for p in publishers], set(bad), 3)
    table = Table(title="rejected, per publisher (esb.rejected.<publisher>)")
    for column in ("publisher", "reason", "expected", "detail"):
        table.add_column(column)
    got = {}
    for record in rejections:
        headers = dict(record.headers)
        event_id = headers["ce_id"].decode()
        got[event_id] = headers["esb_reason"].decode()
        table.add_row(
            record.topic.removeprefix("esb.rejected."),
            got[event_id],
            bad[event_id],
            headers["esb_detail"].decode()[:70],
        )
    console.print(table)

    reports = await verify_topic(kafka, "esb.audit")
    intact = all(r.intact for r in reports.values())
    console.print(
        f"audit: {sum(r.records for r in reports.values())} records in {len(reports)} chain(s), "
        + ("[green]intact[/green]" if intact else "[red]BROKEN[/red]")
    )
    metrics = await asyncio.to_thread(worker.metrics)
    routed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("govesb_pipeline_events_total{") and 'outcome="routed"' in line
    )
    console.print(f"worker metrics: {int(routed)} events routed")
    delivered = {
        (dict(r.headers)["ce_id"].decode(), dict(r.headers)["esb_subscription"].decode())
        for r in deliveries
    }
    lost = len(EXPECTED - delivered) + len(set(bad) - set(got))
    wrong = {i: r for i, r in got.items() if bad.get(i) != r}
    console.print(
        f"delivered: {len(delivered & EXPECTED)}/{len(EXPECTED)}, rejected: {len(got)} "
        f"(expected {len(bad)}), lost: {lost}"
    )
    return 0 if intact and not wrong and not lost and delivered <= EXPECTED else 1


async def prepare(bus: LocalBus, registry_yaml: Path = REGISTRY_YAML) -> BusRegistry:
    """Register the schemas and apply the example registry."""
    kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
    catalog = Catalog.load()
    _, problems = await register_catalog(
        catalog, AsyncSchemaRegistryClient({"url": bus.registry_url})
    )
    registry, lint = load_registry(registry_yaml)
    if problems or registry is None:
        raise LauncherError("; ".join(map(str, [*problems, *lint])))
    await apply_registry(registry, kafka, TopicSettings())
    return registry


async def run_all(
    console: Console, bus: LocalBus, registry: BusRegistry, worker: WorkerProcess, legacy_port: int
) -> int:
    """The mixed stream, then the legacy HTTP flow, with the connectors running."""
    endpoint = PayrollEndpoint(legacy_port)
    await endpoint.start()
    connectors: list[WorkerProcess] = []
    try:
        sink, gateway = await asyncio.to_thread(start_connectors, bus)
        connectors += [sink, gateway]
        console.print(
            f"HTTP sink (utumishi) and gateway (http://127.0.0.1:{gateway.web_port}) ready; "
            f"legacy payroll endpoint at {endpoint.url}"
        )
        code = await show(console, bus, registry, worker)
        legacy_ok = await legacy_flow(console, endpoint, gateway.web_port)
        return code if legacy_ok else 1
    finally:
        for process in connectors:
            await asyncio.to_thread(process.stop)
        await endpoint.stop()


def main() -> int:
    """Entry point of ``python -m deploy.demo``."""
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)
    try:
        with LocalBus(say=lambda line: console.print(f"[dim]{line}[/dim]")) as bus:
            legacy_port = free_port()
            registry = asyncio.run(prepare(bus, registry_with_endpoint(legacy_port)))
            console.print(
                f"registered {len(registry.catalog)} event types; applied "
                f"{len(registry.institutions)} institutions, "
                f"{len(registry.subscriptions)} agreements"
            )
            log_path = REPO / ".cache" / "demo-worker.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            worker = start_worker(bus.bootstrap, bus.registry_url, log_path)
            console.print(
                f"worker ready: http://127.0.0.1:{worker.web_port}/health, /metrics "
                f"(log {log_path})"
            )
            try:
                code = asyncio.run(run_all(console, bus, registry, worker, legacy_port))
            finally:
                exit_code, took = worker.stop()
                console.print(f"worker stopped in {took:.1f}s (exit {exit_code})")
            return code
    except LauncherError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
