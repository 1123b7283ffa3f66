"""The trace index: ``esb.audit`` (and the agreements of ``esb.registry``) into a store.

:class:`AuditIndex` reads from the positions the store holds (the beginning for a new or
deleted database) to the end, in batches written with their positions in one transaction;
``catch_up`` stops there (the CLI, before a query), ``follow`` keeps reading (``govesb index
follow``, the portal's follower). Records older than the retention are neither stored nor
kept: each pass prunes them. Reading a record twice changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams.client.consuming import assign_topics
from streams.contract import topics
from streams.settings import KafkaSettings
from streams.trace.entries import (
    iso,
    parse_agreement,
    parse_audit,
    parse_grant,
    parse_owner,
    parse_service_owner,
    version_digest,
)
from streams.trace.store import Batch, TraceStore

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 3600.0


def batch_of(
    records: Iterable[ConsumerRecord[bytes, bytes]], audit_topic: str = topics.AUDIT
) -> Batch:
    """What records of the audit and registry topics add to the index (pure)."""
    batch = Batch()
    for record in records:
        batch.positions[(record.topic, record.partition)] = record.offset + 1
        if record.topic == audit_topic:
            entry = parse_audit(record.value)
            if entry is not None:
                batch.entries.append(entry)
            continue
        key = (record.key or b"").decode("utf-8", "replace")
        if record.value is None:  # a removed entry: its past versions still explain the past
            continue
        if key.startswith("subscription/"):
            agreement = parse_agreement(record.value, record.timestamp)
            if agreement is not None:
                batch.agreements.append((version_digest(record.value), agreement))
        elif key.startswith("grant/"):
            grant = parse_grant(record.value, record.timestamp)
            if grant is not None:
                batch.agreements.append((version_digest(record.value), grant))
        elif key.startswith(("event-type/", "service/")):
            owner = (parse_owner if key.startswith("event-type/") else parse_service_owner)(
                record.value
            )
            if owner is not None:
                batch.owners[owner[0]] = owner[1]
    return batch


class AuditIndex:
    """Keeps a :class:`TraceStore` up to date with the audit log."""

    def __init__(
        self,
        store: TraceStore,
        kafka: KafkaSettings,
        *,
        retention: dt.timedelta,
        audit_topic: str = topics.AUDIT,
        registry_topic: str = topics.REGISTRY,
    ) -> None:
        self.store = store
        self.kafka = kafka
        self.retention = retention
        self.audit_topic = audit_topic
        self.registry_topic = registry_topic

    def cutoff(self) -> str:
        """Rows older than this are not kept."""
        return iso(dt.datetime.now(dt.UTC) - self.retention)

    async def catch_up(self) -> int:
        """Read everything written so far; return the audit rows added."""
        consumer = await self._consumer()
        try:
            assigned = await self._assign(consumer)
            end = await consumer.end_offsets(assigned)
            added = 0
            for partition in assigned:
                while await consumer.position(partition) < end[partition]:
                    batch = await consumer.getmany(partition, timeout_ms=1000, max_records=5000)
                    added += self._write(r for rs in batch.values() for r in rs)
            self.store.prune(self.cutoff())
            return added
        finally:
            await consumer.stop()

    async def follow(self, stopping: asyncio.Event) -> None:
        """Read and write until ``stopping`` is set."""
        consumer = await self._consumer()
        try:
            await self._assign(consumer)
            pruned = 0.0
            loop = asyncio.get_running_loop()
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                self._write(r for rs in batch.values() for r in rs)
                if loop.time() - pruned >= PRUNE_EVERY_S:
                    removed = self.store.prune(self.cutoff())
                    pruned = loop.time()
                    if removed:
                        log.info("pruned %d audit rows older than %s", removed, self.cutoff())
        finally:
            await consumer.stop()

    def _write(self, records: Iterable[ConsumerRecord[bytes, bytes]]) -> int:
        batch = batch_of(records, self.audit_topic)
        if not batch.positions:
            return 0
        return self.store.write(batch, not_before=self.cutoff())

    async def _consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **self.kafka.aiokafka_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a stored position already deleted: the oldest
        )
        await consumer.start()
        return consumer

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        assigned = await assign_topics(consumer, [self.audit_topic, self.registry_topic])
        known = self.store.positions()
        for partition in assigned:
            offset = known.get((partition.topic, partition.partition))
            if offset is not None:
                consumer.seek(partition, offset)
        return assigned
