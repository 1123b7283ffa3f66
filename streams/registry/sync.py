"""The registry on the bus: ``govesb registry apply`` (the live view is ``streams.registry.view``).

``esb.registry`` is a compacted topic of JSON records keyed ``institution/<id>``,
``event-type/<full name>`` and ``subscription/<id>``; a removed entry is a tombstone.
Applying creates missing topics, sets the Kafka ACLs the registry implies
(``streams.registry.acls``; on a cluster with an authorizer) and writes only what changed, so a
second apply of the same YAML changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.contract import topics
from streams.registry.acls import DEFAULT_WORKER_GROUP, AclReport, acl_bindings, bus_acls, sync_acls
from streams.registry.model import BusRegistry
from streams.registry.view import EventTypeRecord, RegistryView
from streams.settings import KafkaSettings, TopicSettings

__all__ = ["EventTypeRecord", "RegistryView", "apply_registry", "registry_records"]

log = logging.getLogger(__name__)


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def registry_records(registry: BusRegistry) -> dict[str, bytes]:
    """Every record ``esb.registry`` should hold for ``registry``, by key."""
    records: dict[str, bytes] = {}
    for institution in registry.document.institutions:
        records[f"institution/{institution.id}"] = _encode(institution.model_dump(mode="json"))
    for event_type in registry.catalog:
        records[f"event-type/{event_type.name}"] = _encode(
            {
                "name": event_type.name,
                "owner": event_type.owner,
                "key": event_type.key,
                "pii": list(event_type.pii),
                "compatibility": event_type.compatibility,
                "description": event_type.description,
                "schema": event_type.schema,
            }
        )
    for subscription in registry.document.subscriptions:
        records[f"subscription/{subscription.id}"] = _encode(subscription.model_dump(mode="json"))
    for service in registry.document.services:
        declared = registry.catalog.services[service.api_code]
        records[f"service/{service.api_code}"] = _encode(
            {
                **service.model_dump(mode="json"),
                "provider": declared.provider,
                "request_type": declared.request.name,
                "response_type": declared.response.name,
                "description": declared.description,
                "key": declared.key,
            }
        )
    for grant in registry.document.grants:
        records[f"grant/{grant.id}"] = _encode(grant.model_dump(mode="json"))
    return records


def plan_changes(desired: dict[str, bytes], current: dict[str, bytes]) -> dict[str, bytes | None]:
    """Records to write (new or changed) and tombstones (None) for removed keys."""
    changes: dict[str, bytes | None] = {
        key: value for key, value in desired.items() if current.get(key) != value
    }
    changes.update({key: None for key in current if key not in desired})
    return changes


def desired_topics(registry: BusRegistry, settings: TopicSettings) -> list[topics.TopicSpec]:
    """The topics of the design for every institution, plus audit and registry."""
    specs = topics.shared_topics(settings)
    for institution in registry.document.institutions:
        specs.extend(topics.institution_topics(institution.id, settings))
    specs.extend(topics.service_topics(providers(registry), requesters(registry), settings))
    return specs


def providers(registry: BusRegistry) -> list[str]:
    """Institutions that serve at least one API."""
    return sorted({registry.catalog.services[s.api_code].provider
                   for s in registry.document.services})  # fmt: skip


def requesters(registry: BusRegistry) -> list[str]:
    """Institutions granted at least one API."""
    return sorted({g.consumer for g in registry.document.grants})


def replication_factor(settings: TopicSettings, brokers: int) -> int:
    """Replicas of a new topic: the configured number, else 3, or fewer when fewer brokers."""
    return settings.replication_factor or min(3, brokers)


@dataclass
class ApplyReport:
    """What ``apply_registry`` changed."""

    topics_created: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    acls: AclReport = field(default_factory=AclReport)


async def ensure_topics(
    kafka: KafkaSettings, specs: list[topics.TopicSpec], settings: TopicSettings
) -> list[str]:
    """Create the topics in ``specs`` that do not exist yet; return their names."""
    admin = AIOKafkaAdminClient(**kafka.aiokafka_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        cluster = await admin.describe_cluster()
        brokers = len(cluster.get("brokers", [])) or 1
        replication = replication_factor(settings, brokers)
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(spec.name, spec.partitions, replication, topic_configs=spec.config)
                    for spec in missing
                ]
            )
            await _wait_for_leaders(admin, [spec.name for spec in missing])
        return [spec.name for spec in missing]
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Wait (up to 15 s) until every partition of the new topics has a leader."""
    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        described = await admin.describe_topics(names)
        if all(
            t.get("error_code", 0) == 0
            and t.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.2)


async def apply_registry(
    registry: BusRegistry,
    kafka: KafkaSettings,
    settings: TopicSettings,
    *,
    worker_group: str = DEFAULT_WORKER_GROUP,
) -> ApplyReport:
    """Create missing topics, set the ACLs, then write the changed records and tombstones.

    ACLs come before records: a new institution's systems are allowed in before the
    processes learn of it, and a removed one's records (which tell apply whose ACLs it owns)
    go only after its ACLs did, so an apply that fails half-way is finished by the next.
    ``worker_group`` is the pipeline workers' consumer group (their ``GOVESB_APP_ID``).
    """
    report = ApplyReport()
    report.topics_created = await ensure_topics(kafka, desired_topics(registry, settings), settings)
    view = RegistryView(kafka)
    await view.start(follow=False)
    current = dict(view.raw)
    await view.stop()
    before = {key.partition("/")[2] for key in current if key.startswith("institution/")}
    known = {i.id for i in registry.document.institutions} | before
    report.acls = await sync_acls(
        kafka, acl_bindings(bus_acls(registry, worker_group=worker_group)), known
    )
    changes = plan_changes(registry_records(registry), current)
    producer = AIOKafkaProducer(**kafka.durable_producer_options())
    await producer.start()
    try:
        sent = [
            await producer.send(topics.REGISTRY, value, key=key.encode())
            for key, value in sorted(changes.items())
        ]
        await asyncio.gather(*sent)  # raises if any record was not acknowledged
        for key, value in sorted(changes.items()):
            (report.written if value is not None else report.deleted).append(key)
    finally:
        await producer.stop()
    return report
