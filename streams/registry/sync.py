"""The registry on the bus: ``govesb registry apply`` and the live view every process keeps.

``esb.registry`` is a compacted topic of JSON records keyed ``institution/<id>``,
``event-type/<full name>`` and ``subscription/<id>``; a removed entry is a tombstone.
Applying creates missing topics, sets the Kafka ACLs the registry implies
(``streams.registry.acls``; on a cluster with an authorizer) and writes only what changed, so a
second apply of the same YAML changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.client.consuming import assign_whole_topic
from streams.contract import topics
from streams.contract.signing import KeyFormatError, KeyRing, load_public_key
from streams.registry.acls import DEFAULT_WORKER_GROUP, AclReport, acl_bindings, bus_acls, sync_acls
from streams.registry.model import BusRegistry, Institution, Subscription
from streams.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)


class EventTypeRecord(BaseModel):
    """An event type as published on ``esb.registry``."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    name: str
    owner: str
    key: str
    pii: list[str] = []
    compatibility: str = "BACKWARD"
    description: str = ""
    avro_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")


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
    return specs


def replication_factor(settings: TopicSettings, brokers: int) -> int:
    """Replicas of a new topic: the configured number, else 3, or fewer when fewer brokers."""
    return settings.replication_factor or min(3, brokers)


class RegistryView:
    """An in-memory view of ``esb.registry``, kept up to date while running.

    ``await view.start()`` returns once everything written before it is loaded; changes made
    later arrive within the consumer's poll interval and call the ``on_change`` callbacks.
    """

    def __init__(self, kafka: KafkaSettings, *, topic: str = topics.REGISTRY) -> None:
        self._kafka = kafka
        self._topic = topic
        self.raw: dict[str, bytes] = {}
        self.institutions: dict[str, Institution] = {}
        self.event_types: dict[str, EventTypeRecord] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.keyring = KeyRing()
        self._key_owner: dict[str, str] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.version = 0

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(key)`` after every applied record."""
        self._listeners.append(listener)

    @property
    def key_owners(self) -> dict[str, str]:
        """Institution of every non-revoked key id."""
        return self._key_owner

    def key_owner(self, key_id: str) -> str | None:
        """The institution a (non-revoked) key id belongs to."""
        return self._key_owner.get(key_id)

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one record; a malformed one is logged and skipped, never fatal."""
        kind, _, name = key.partition("/")
        try:
            document = json.loads(value) if value is not None else None
            if kind == "institution":
                self._set(self.institutions, name, document, Institution)
                self._rebuild_keys()
            elif kind == "event-type":
                self._set(self.event_types, name, document, EventTypeRecord)
            elif kind == "subscription":
                self._set(self.subscriptions, name, document, Subscription)
            else:
                log.warning("esb.registry: ignoring record with unknown key %r", key)
                return
        except (ValueError, ValidationError) as error:
            log.warning("esb.registry: ignoring malformed record %r: %s", key, error)
            return
        if value is None:
            self.raw.pop(key, None)
        else:
            self.raw[key] = value
        self.version += 1
        for listener in self._listeners:
            listener(key)

    @staticmethod
    def _set(target: dict[str, Any], name: str, document: Any, model: type[BaseModel]) -> None:
        if document is None:
            target.pop(name, None)
        else:
            target[name] = model.model_validate(document)

    def _rebuild_keys(self) -> None:
        ring, owners = KeyRing(), {}
        for institution in self.institutions.values():
            for key in institution.keys:
                if key.revoked:
                    continue
                try:
                    ring.add(key.id, load_public_key(key.public_key))
                except KeyFormatError as error:
                    log.warning("esb.registry: key %s of %s: %s", key.id, institution.id, error)
                    continue
                owners[key.id] = institution.id
        self.keyring, self._key_owner = ring, owners

    LOAD_TIMEOUT_S = 30.0

    async def start(self, *, follow: bool = True) -> None:
        """Load everything up to the current end; with ``follow`` keep reading after."""
        consumer = AIOKafkaConsumer(
            **self._kafka.aiokafka_options(), enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        self._consumer = consumer
        try:
            try:
                assigned = await assign_whole_topic(consumer, self._topic)
            except LookupError:
                raise LookupError(
                    f"topic {self._topic} does not exist: run `govesb registry apply` first"
                ) from None
            end = await consumer.end_offsets(assigned)
            await asyncio.wait_for(self._read_until(consumer, end), self.LOAD_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        if follow:
            self._task = asyncio.create_task(self._follow(consumer), name="registry-view")

    async def _read_until(self, consumer: AIOKafkaConsumer, end: dict[Any, int]) -> None:
        for partition, offset in end.items():
            while await consumer.position(partition) < offset:
                await self._poll(consumer, 500)

    async def _poll(self, consumer: AIOKafkaConsumer, timeout_ms: int) -> None:
        batches = await consumer.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            for record in records:
                if record.key is not None:
                    self.apply(record.key.decode("utf-8", "replace"), record.value)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self._poll(consumer, 1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the last good view; the consumer reconnects by itself
                log.exception("esb.registry: reading failed; retrying")
                await asyncio.sleep(1)

    async def stop(self) -> None:
        """Stop following and close the consumer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


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
