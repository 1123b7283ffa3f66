"""Kafka-native parts of the request tests: a provider answering per the contract, a GovESB
request body, readers of a topic from its end, and waiting for a worker to catch up."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from deploy.kafka.launcher import LauncherError
from deploy.worker import WorkerProcess, start_worker
from streams.client.consuming import assign_topics
from streams.contract import topics
from streams.contract.codec import SchemaStore, decode_body, encode
from streams.contract.envelope import new_envelope
from streams.contract.jsonavro import from_json, to_json
from streams.contract.requests import answer_id, header
from streams.contract.signing import PrivateKey, sign_event
from streams.settings import KafkaSettings
from tests.corpus.malformed import demo_key
from tests.unit.pipeline_fixtures import CATALOG, KEY_IDS


async def worker_caught_up(
    kafka: str, worker: WorkerProcess, institutions: list[str], bound_s: float = 300
) -> None:
    """Once ``worker`` has read every ingress partition of ``institutions`` up to now: a
    probe without headers is sent to each, and the worker's audit chain (its key names the
    process) records each, in order after whatever was there before it. A broker shared with
    earlier runs, and with other workers, may hold a backlog."""
    producer = AIOKafkaProducer(**KafkaSettings(bootstrap_servers=kafka).durable_producer_options())
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    chain = f"/{worker.process.pid}/".encode()
    try:
        for partition in await assign_topics(consumer, [topics.AUDIT], from_beginning=False):
            await consumer.position(partition)
        probes = set()
        for institution in institutions:
            topic = topics.ingress(institution)
            for partition in sorted(await producer.partitions_for(topic)):
                probe = f"probe-{uuid.uuid4().hex}".encode()
                await producer.send_and_wait(topic, probe, partition=partition)
                probes.add(hashlib.sha256(probe).hexdigest())
        async with asyncio.timeout(bound_s):
            while probes:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    probes -= {
                        json.loads(record.value).get("payload_sha256")
                        for record in records
                        if chain in (record.key or b"")
                    }
    finally:
        await consumer.stop()
        await producer.stop()


def caught_up_worker(
    kafka: str, registry: str, log_path: Path, app_id: str, institutions: list[str]
) -> WorkerProcess:
    """A worker of group ``app_id`` (one group across runs: a broker shared with earlier
    runs is read once), committing every 0.5 s, returned once it has read every ingress
    partition of ``institutions`` up to now (:func:`worker_caught_up`)."""
    try:
        process = start_worker(
            kafka, registry, log_path, app_id=app_id,
            extra_env={"GOVESB_COMMIT_INTERVAL_S": "0.5"},
        )  # fmt: skip
    except LauncherError as error:
        pytest.fail(str(error))
    asyncio.run(worker_caught_up(kafka, process, institutions))
    return process


@dataclass
class Provider:
    """What the test's Kafka-native provider received: request id -> the routed record."""

    requests: dict[str, Any] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class ProviderError:
    """What a provider says when it cannot answer (``esb_status: provider-error``)."""

    reason: str
    message: str


async def _answer(
    producer: AIOKafkaProducer, schemas: SchemaStore, provider: str, record: Any, body: Any
) -> None:
    """Answer ``record`` (a request routed to ``provider``) as the contract says: ``body`` the
    response record as JSON, or a :class:`ProviderError` (no value)."""
    headers = list(record.headers)
    request_id = (header(headers, "ce_id") or b"").decode()
    service = CATALOG.services[(header(headers, "esb_api") or b"").decode()]
    if isinstance(body, ProviderError):
        value = b""
        status = [("esb_status", b"provider-error"), ("esb_reason", body.reason.encode()),
                  ("esb_message", body.message.encode())]  # fmt: skip
    else:
        value = encode(
            await schemas.id_for(service.response), service.response.parsed,
            from_json(service.response.schema, body),
        )  # fmt: skip
        status = [("esb_status", b"answered")]
    envelope = new_envelope(
        provider, "api", service.response.name, request_id,
        event_id=answer_id(request_id), correlation_id=request_id,
    )  # fmt: skip
    key = demo_key(provider)
    envelope = envelope.signed(
        KEY_IDS[provider],
        sign_event(key, envelope.id, envelope.source, envelope.type, envelope.time, value),
    )
    ticket = [(n, v) for n, v in headers if n in ("esb_ticket", "esb_ticket_sig", "esb_ticket_key")]
    await producer.send_and_wait(
        topics.ingress(provider), value, key=request_id.encode(),
        headers=[*envelope.to_headers(), *ticket, *status,
                 ("esb_api", service.api_code.encode())],
    )  # fmt: skip


@contextlib.asynccontextmanager
async def kafka_native_provider(
    kafka: str, registry: str, provider: str, answer: Callable[[dict[str, Any]], Any]
) -> AsyncIterator[Provider]:
    """``provider`` answering what is routed to it from now on with ``answer(request)`` (as
    JSON; None: never answer)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    producer = AIOKafkaProducer(**KafkaSettings(bootstrap_servers=kafka).durable_producer_options())
    schemas = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
    await consumer.start()
    await producer.start()
    seen = Provider()

    async def serve() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    api = (header(list(record.headers), "esb_api") or b"").decode()
                    service = CATALOG.services.get(api)
                    if service is None:
                        continue
                    request = to_json(decode_body(service.request.parsed, record.value))
                    seen.requests[(header(list(record.headers), "ce_id") or b"").decode()] = record
                    seen.arrived.set()
                    body = answer(request)
                    if body is not None:
                        await _answer(producer, schemas, provider, record, body)

    try:
        for partition in await assign_topics(
            consumer, [topics.request(provider)], from_beginning=False
        ):
            await consumer.position(partition)
        task = asyncio.create_task(serve())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await consumer.stop()
        await producer.stop()


def signed_body(key: PrivateKey, data: dict[str, Any]) -> bytes:
    """A request as the Node client writes it: compact, data first, signed over its text."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f'{{"data":{text},"signature":"{key.sign(text.encode())}"}}'.encode()


@contextlib.asynccontextmanager
async def reader_at_end(kafka: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A reader of ``topic`` from its end as it is now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        for partition in await assign_topics(consumer, [topic], from_beginning=False):
            await consumer.position(partition)
        yield consumer
    finally:
        await consumer.stop()


async def first_record(
    consumer: AIOKafkaConsumer, wanted: Callable[[Any], bool], wait_s: float = 30
) -> Any:
    """The first record read that is ``wanted``."""
    async with asyncio.timeout(wait_s):
        while True:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if wanted(record):
                        return record
