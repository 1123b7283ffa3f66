"""``govesb tail``: read a topic and decode each record's envelope and payload."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from streams.client import fetch_guard
from streams.client.consuming import assign_whole_topic
from streams.contract.codec import RegistryUnavailableError, SchemaStore
from streams.contract.envelope import JSON_CONTENT_TYPE
from streams.contract.jsonavro import to_json
from streams.contract.reasons import EventError
from streams.settings import KafkaSettings, SchemaRegistrySettings


async def describe_record(
    record: ConsumerRecord[bytes, bytes], schemas: SchemaStore
) -> dict[str, Any]:
    """A JSON-ready view of one record: position, key, headers and decoded payload."""
    view: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "headers": {
            name: value.decode("utf-8", "replace") if value is not None else None
            for name, value in record.headers
        },
    }
    if record.value is None:
        view["error"] = "tombstone (no value)"
        return view
    if view["headers"].get("content-type") == JSON_CONTENT_TYPE:  # an HTTP agreement's body
        try:
            view["payload"] = json.loads(record.value)
        except ValueError as error:
            view["error"] = f"not JSON: {error}"
        return view
    try:
        decoded = await schemas.decode(record.value)
    except (EventError, RegistryUnavailableError) as error:
        view["error"] = str(error)
        return view
    view["schema_id"] = decoded.schema.id
    view["schema"] = decoded.schema.full_name
    view["payload"] = to_json(decoded.record)
    return view


async def tail_topic(
    kafka: KafkaSettings,
    schema_registry: SchemaRegistrySettings,
    topic: str,
    printer: Callable[[dict[str, Any]], None],
    *,
    from_beginning: bool = True,
    max_records: int = 0,
    idle_timeout: float = 0.0,
) -> int:
    """Print every record of ``topic`` (all partitions); return how many were printed."""
    schemas = SchemaStore(AsyncSchemaRegistryClient(schema_registry.client_config()))
    fetch_guard.install()  # an ingress topic may hold a record with unreadable header names
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    count = 0
    try:
        await assign_whole_topic(consumer, topic, from_beginning=from_beginning)
        last_record = time.monotonic()
        while not max_records or count < max_records:
            batches = await consumer.getmany(timeout_ms=500)
            if not batches:
                if idle_timeout and time.monotonic() - last_record > idle_timeout:
                    break
                await asyncio.sleep(0)
                continue
            last_record = time.monotonic()
            for records in batches.values():
                for record in records:
                    printer(await describe_record(record, schemas))
                    count += 1
                    if max_records and count >= max_records:
                        return count
    finally:
        await consumer.stop()
    return count
