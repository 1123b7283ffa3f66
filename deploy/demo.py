"""``make demo``: a local bus, the contracts applied, signed events from every institution.

1. Start a real Kafka broker and Apicurio registry from the cached Maven jars.
2. Register the catalogue's schemas and apply ``deploy/registry.example.yaml`` (topics and
   the ``esb.registry`` records), as ``govesb schemas register`` / ``registry apply`` do.
3. Publish each catalogue sample from its owning institution with its demo key (acks=all).
4. Read every ingress topic back, decode each event and verify its signature against the
   keys in ``esb.registry``; print what arrived.

The pipeline (validate, route, transform, fan out) joins this demo as it is built.
"""

from __future__ import annotations

import asyncio
import sys

import yaml
from aiokafka import AIOKafkaConsumer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from rich.console import Console
from rich.table import Table

from deploy.kafka.launcher import REPO, LauncherError, LocalBus
from streams import topics
from streams.catalog import Catalog
from streams.codec import SchemaStore
from streams.consuming import assign_whole_topic
from streams.envelope import Envelope
from streams.governance import register_catalog
from streams.jsonavro import from_json
from streams.publisher import Publisher
from streams.registry_model import load_registry
from streams.registry_sync import RegistryView, apply_registry
from streams.settings import KafkaSettings, SchemaRegistrySettings, TopicSettings
from streams.signing import SigningError, load_private_key, verify_event

REGISTRY_YAML = REPO / "deploy" / "registry.example.yaml"
KEYS = REPO / "deploy" / "demo-keys"


async def publish_samples(
    console: Console, kafka: KafkaSettings, schema_registry: SchemaRegistrySettings
) -> dict[str, str]:
    """Publish every sample from its owner; return event id -> event type."""
    catalog = Catalog.load()
    samples = yaml.safe_load((catalog.path.parent / "samples.yaml").read_text())
    registry, problems = load_registry(REGISTRY_YAML)
    if registry is None:
        raise LauncherError("; ".join(map(str, problems)))
    published: dict[str, str] = {}
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
            payload = from_json(event_type.schema, samples[event_type.name])
            event_id = await publisher.publish(event_type.name, payload)
        published[event_id] = event_type.name
        console.print(f"  published {event_type.name:<32} as {institution.id:<9} id={event_id}")
    return published


async def read_back(
    kafka: KafkaSettings, schema_registry: SchemaRegistrySettings, published: dict[str, str]
) -> Table:
    """Every published event as found on its ingress topic, signature checked."""
    view = RegistryView(kafka)
    await view.start(follow=False)
    await view.stop()
    schemas = SchemaStore(AsyncSchemaRegistryClient(schema_registry.client_config()))
    table = Table(title="events on the bus (esb.ingress.*)")
    for column in ("ingress topic", "event type", "key", "signed by", "signature", "fields"):
        table.add_column(column)
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None)
    await consumer.start()
    try:
        for institution in sorted(view.institutions):
            await assign_whole_topic(consumer, topics.ingress(institution))
            records = [
                r for batch in (await consumer.getmany(timeout_ms=3000)).values() for r in batch
            ]
            for record in records:
                envelope = Envelope.from_headers(record.headers)
                if envelope.id not in published:
                    continue
                decoded = await schemas.decode(record.value)
                try:
                    verify_event(
                        view.keyring, envelope.sig_key_id or "", envelope.signature or "",
                        envelope.id, envelope.source, envelope.type, envelope.time, record.value,
                    )  # fmt: skip
                    verdict = "[green]valid[/green]"
                except SigningError as error:
                    verdict = f"[red]{type(error).__name__}[/red]"
                table.add_row(
                    record.topic,
                    envelope.type.rsplit(".", 1)[-1],
                    envelope.subject,
                    view.key_owner(envelope.sig_key_id or "") or "?",
                    verdict,
                    str(len(decoded.record)),
                )
    finally:
        await consumer.stop()
    return table


async def run(console: Console) -> int:
    """The whole demo on a freshly started local bus."""
    with LocalBus(say=lambda line: console.print(f"[dim]{line}[/dim]")) as bus:
        kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
        schema_registry = SchemaRegistrySettings(url=bus.registry_url)
        catalog = Catalog.load()
        done, problems = await register_catalog(
            catalog, AsyncSchemaRegistryClient(schema_registry.client_config())
        )
        if problems:
            raise LauncherError("; ".join(map(str, problems)))
        console.print(f"registered {len(done)} event schemas")
        registry, problems = load_registry(REGISTRY_YAML)
        if registry is None:
            raise LauncherError("; ".join(map(str, problems)))
        applied = await apply_registry(registry, kafka, TopicSettings())
        console.print(
            f"applied {REGISTRY_YAML.name}: {len(applied.topics_created)} topics, "
            f"{len(applied.written)} registry records"
        )
        published = await publish_samples(console, kafka, schema_registry)
        table = await read_back(kafka, schema_registry, published)
        console.print(table)
        arrived = table.row_count
        console.print(f"published: {len(published)}, on the bus and verified: {arrived}")
        return 0 if arrived == len(published) else 1


def main() -> int:
    """Entry point of ``python -m deploy.demo``."""
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    try:
        return asyncio.run(run(console))
    except LauncherError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
