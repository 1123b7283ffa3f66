"""Reading both DR sites for ``govesb dr``: log-end offsets, MirrorMaker's markers, groups'
offsets and the schema registries' ids. What they mean is computed in ``streams.dr.sites``."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.dr.sites import (
    Checkpoint,
    DrSites,
    DrStatus,
    Partition,
    compare_registries,
    group_states,
    latest_checkpoints,
    parse_checkpoint,
    parse_heartbeat,
    replication_lag,
)
from streams.settings import KafkaSettings, SchemaRegistrySettings


async def _consumer(kafka: KafkaSettings, bound_s: float) -> AIOKafkaConsumer | None:
    """A started group-less consumer, or None when the cluster does not answer in time."""
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka_options(),
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(bound_s * 1000),
    )
    try:
        await asyncio.wait_for(consumer.start(), bound_s)
    except Exception:
        with contextlib.suppress(Exception):
            await consumer.stop()
        return None
    return consumer


async def _partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    """Every partition of ``topics``, with their leaders known to ``consumer``."""
    # A group-less consumer's metadata covers only the topics its client tracks: track these
    # (which refreshes the metadata) before asking for partitions and offsets.
    await consumer._client.set_topics(topics)
    return [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in sorted(consumer.partitions_for_topic(topic) or ())
    ]


async def matching_partitions(consumer: AIOKafkaConsumer, pattern: str) -> list[TopicPartition]:
    """Every partition of every topic whose name matches ``pattern``."""
    wanted = re.compile(pattern)
    return await _partitions(
        consumer, sorted(t for t in await consumer.topics() if wanted.fullmatch(t))
    )


async def log_end_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[Partition, int]:
    """Log-end offset of each of ``partitions``."""
    if not partitions:
        return {}
    ends = await consumer.end_offsets(partitions)
    return {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}


async def _read_tail(consumer: AIOKafkaConsumer, topic: str, tail: int) -> list[Any]:
    """The last ``tail`` records of each partition of ``topic`` (none if it does not exist)."""
    if topic not in await consumer.topics():
        return []
    assigned = await _partitions(consumer, [topic])
    consumer.assign(assigned)
    first = await consumer.beginning_offsets(assigned)
    end = await consumer.end_offsets(assigned)
    records: list[Any] = []
    for partition in assigned:
        consumer.seek(partition, max(first[partition], end[partition] - tail))
        while await consumer.position(partition) < end[partition]:
            batch = await consumer.getmany(partition, timeout_ms=1000)
            records.extend(r for rs in batch.values() for r in rs)
    return records


# Checkpoints are compacted by key (group, topic, partition), but the active segment is not:
# the newest of each key is in the tail unless a group has been idle for that many records.
CHECKPOINT_TAIL = 100_000


async def read_replication_markers(
    consumer: AIOKafkaConsumer, alias: str
) -> tuple[int | None, list[Checkpoint]]:
    """The newest heartbeat time (ms) of ``<alias>.heartbeats`` and the recent checkpoints."""
    newest = None
    for record in await _read_tail(consumer, f"{alias}.heartbeats", 1):
        with contextlib.suppress(ValueError):
            beat = parse_heartbeat(record.key or b"", record.value or b"")
            newest = max(newest or 0, beat.timestamp_ms)
    checkpoints = []
    topic = f"{alias}.checkpoints.internal"
    for record in await _read_tail(consumer, topic, CHECKPOINT_TAIL):
        with contextlib.suppress(ValueError):
            checkpoints.append(
                parse_checkpoint(record.key or b"", record.value or b"", record.timestamp)
            )
    return newest, checkpoints


async def committed_offsets(
    kafka: KafkaSettings, pattern: str, bound_s: float, groups: Iterable[str] = ()
) -> dict[str, dict[Partition, int]]:
    """Committed offsets of the groups whose id matches ``pattern`` (and of ``groups``)."""
    admin = AIOKafkaAdminClient(**kafka.aiokafka_options(), request_timeout_ms=int(bound_s * 1000))
    await asyncio.wait_for(admin.start(), bound_s)
    try:
        wanted = re.compile(pattern)
        listed = {str(g[0]) for g in await admin.list_consumer_groups()}
        found: dict[str, dict[Partition, int]] = {}
        for group in sorted({g for g in listed if wanted.fullmatch(g)} | (set(groups) & listed)):
            offsets = await admin.list_consumer_group_offsets(group)
            found[group] = {
                (tp.topic, tp.partition): o.offset for tp, o in offsets.items() if o.offset >= 0
            }
        return found
    finally:
        await admin.close()


async def registry_versions(
    settings: SchemaRegistrySettings, bound_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """Every (subject, version) the registry holds, with its schema id."""
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    # One quick retry: a registry that does not answer is reported, not waited for.
    config = {**settings.client_config(), "timeout": bound_s, "max.retries": 1,
              "retries.wait.ms": 200}  # fmt: skip
    client = AsyncSchemaRegistryClient(config)
    found = {}
    for subject in await client.get_subjects():
        for version in await client.get_versions(subject):
            registered = await client.get_version(subject, version)
            found[(subject, version)] = int(registered.schema_id or 0)
    return found


async def collect_status(sites: DrSites) -> DrStatus:
    """Read both sites (the primary may be gone); ``ConnectionError`` if the DR site is.

    The log-end offsets are asked for back to back, the DR site's first: under traffic the lag
    is then over- rather than underestimated, so a planned switchover never sees "in step" too
    early.
    """
    settings, primary, dr = sites.settings, sites.primary, sites.dr
    primary_registry, dr_registry = sites.primary_registry, sites.dr_registry
    timeout = settings.timeout_s
    at_dr = await _consumer(dr, timeout)
    if at_dr is None:
        raise ConnectionError(f"the DR cluster ({dr.bootstrap_servers}) does not answer")
    at_primary = await _consumer(primary, timeout)
    primary_ends: dict[Partition, int] | None = None
    primary_committed = None
    try:
        async with asyncio.timeout(timeout * 3):
            dr_partitions = await matching_partitions(at_dr, settings.topics)
            primary_partitions = None
            if at_primary is not None:
                with contextlib.suppress(Exception):  # gone in between: as good as unreachable
                    primary_partitions = await matching_partitions(at_primary, settings.topics)
            dr_ends = await log_end_offsets(at_dr, dr_partitions)
            if at_primary is not None and primary_partitions is not None:
                with contextlib.suppress(Exception):
                    primary_ends = await log_end_offsets(at_primary, primary_partitions)
            heartbeat_ms, checkpoints = await read_replication_markers(
                at_dr, settings.primary_alias
            )
            latest = latest_checkpoints(checkpoints)
            translated = {group for group, _, _ in latest}
            dr_committed = await committed_offsets(dr, settings.groups, timeout, translated)
    except Exception as error:
        raise ConnectionError(
            f"the DR cluster ({dr.bootstrap_servers}) failed to answer: {error!r}"
        ) from None
    finally:
        await at_dr.stop()
        if at_primary is not None:
            await at_primary.stop()
    if primary_ends is not None:
        try:
            async with asyncio.timeout(timeout * 3):
                primary_committed = await committed_offsets(
                    primary, settings.groups, timeout, translated
                )
        except Exception:
            primary_ends = None
    notes: list[str] = []
    registry = None
    if dr_registry is not None:
        try:
            dr_ids = await asyncio.wait_for(registry_versions(dr_registry, timeout), timeout)
        except Exception as error:
            notes.append(f"the DR schema registry ({dr_registry.url}) does not answer: {error!r}")
        else:
            primary_ids = None
            if primary_registry is not None and primary_ends is not None:  # a site fails whole
                with contextlib.suppress(Exception):
                    primary_ids = await asyncio.wait_for(
                        registry_versions(primary_registry, timeout), timeout
                    )
            registry = compare_registries(primary_ids, dr_ids)
    return DrStatus(
        at_ms=int(time.time() * 1000),
        primary=primary.bootstrap_servers,
        dr=dr.bootstrap_servers,
        primary_reachable=primary_ends is not None,
        heartbeat_ms=heartbeat_ms,
        partitions=replication_lag(primary_ends, dr_ends),
        groups=group_states(latest, primary_committed, dr_committed),
        registry=registry,
        notes=notes,
    )
