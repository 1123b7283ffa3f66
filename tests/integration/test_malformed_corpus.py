"""The malformed corpus against the real thing: a ``govesb worker`` and an HTTP gateway.

Every Kafka case goes to an ingress topic among valid events; each must come back on
``esb.rejected.<publisher>`` with its documented ``esb_reason`` (the rejected copy keeps the
record's own headers, so a ``corpus_case`` header tells which case it is), and every valid
event sent between them must be delivered. Every gateway case must get its status, error
code and failing field from a gateway producing to the real broker; never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink.delivery import basic_auth
from deploy.worker import WorkerProcess
from streams.client.consuming import assign_topics
from streams.contract.codec import SchemaStore
from streams.registry.view import RegistryView
from streams.settings import KafkaSettings
from tests.corpus import raw_http
from tests.corpus.malformed import (
    CITIZEN,
    DEATH,
    GATEWAY_CASES,
    KAFKA_CASES,
    MAX_BODY_BYTES,
    PAYMENT,
    Forge,
    KafkaRecord,
    RawName,
    push_data,
    push_text,
    signed,
    structured,
)
from tests.integration.gateways import served_gateway
from tests.integration.test_pipeline import _collect
from tests.unit.pipeline_fixtures import CATALOG

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]
SECRET = "corpus-client-secret"  # noqa: S105 - a test client's secret
REJECTED = ["esb.rejected.nida", "esb.rejected.rita"]
DELIVERED = "esb.deliver.tra"  # every valid nida CitizenRegistered is delivered to tra


async def _schema_ids(registry: str) -> dict[str, int]:
    store = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
    return {name: await store.id_for(CATALOG.get(name)) for name in (CITIZEN, DEATH, PAYMENT)}


async def _consumer_at_end(kafka: str, topics: list[str]) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka, group_id=None, enable_auto_commit=False,
        max_partition_fetch_bytes=4_000_000, fetch_max_bytes=8_000_000,
    )  # fmt: skip
    await consumer.start()
    for partition in await assign_topics(consumer, topics, from_beginning=False):
        await consumer.position(partition)  # resolve "end" now, before anything is sent
    return consumer


async def _rejected_copies(
    consumer: AIOKafkaConsumer, run: str, expected: int, worker: WorkerProcess
) -> dict[str, Any]:
    """``corpus_case`` -> this run's rejected record: until ``expected`` were found, the
    worker exited, or 90 s passed."""
    found: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(90):
            while len(found) < expected and worker.process.poll() is None:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    for record in batch:
                        headers = dict(record.headers)
                        if headers.get("corpus_run") == run.encode():
                            found[headers["corpus_case"].decode()] = record
    return found


async def _rejections(
    consumer: AIOKafkaConsumer, run: str, expected: int, worker: WorkerProcess
) -> dict[str, str]:
    """``corpus_case`` -> ``esb_reason`` of this run's rejected records."""
    found = await _rejected_copies(consumer, run, expected, worker)
    return {name: dict(record.headers)["esb_reason"].decode() for name, record in found.items()}


@pytest.mark.timeout(300)
async def test_every_kafka_case_gets_its_reason_and_the_good_events_between_are_delivered(
    kafka: str, registry: str, start_worker
) -> None:
    worker = start_worker()
    forge = Forge(await _schema_ids(registry))
    run = uuid.uuid4().hex
    expected: dict[str, str] = {}  # case -> reason
    counted: set[tuple[str, str]] = set()  # (publisher, reason) the worker's metrics must show
    delivered: set[str] = set()  # event ids
    consumer = await _consumer_at_end(kafka, REJECTED)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka, acks="all", enable_idempotence=True, max_request_size=2_000_000
    )
    await producer.start()

    async def send(record: KafkaRecord, name: str) -> None:
        marks = (("corpus_run", run.encode()), ("corpus_case", name.encode()))
        await producer.send_and_wait(
            record.topic, record.value, key=record.key, headers=[*record.headers, *marks]
        )

    try:
        for index, case in enumerate(KAFKA_CASES):
            *leading, last = case.build(forge)
            for n, record in enumerate(leading):
                await send(record, f"{case.name}#valid-{n}")
                delivered.add((record.first("ce_id") or b"").decode())
            await send(last, case.name)
            if case.reason is None:
                delivered.add((last.first("ce_id") or b"").decode())
            else:
                expected[case.name] = case.reason
                counted.add((last.topic.removeprefix("esb.ingress."), case.reason))
            if index % 4 == 3:  # a valid event between every few bad ones
                good = forge.good()
                await send(good, f"valid-after-{case.name}")
                delivered.add((good.first("ce_id") or b"").decode())
        reasons = await _rejections(consumer, run, len(expected), worker)
    finally:
        await producer.stop()
        await consumer.stop()

    assert reasons == expected  # a valid event rejected would show here under its own name
    records = await _collect(kafka, [DELIVERED], delivered, wait_s=60)
    assert {dict(r.headers)["ce_id"].decode() for r in records} == delivered
    metrics = worker.metrics()
    for publisher, reason in counted:
        assert f'rejections_total{{publisher="{publisher}",reason="{reason}"}}' in metrics
    health = worker.health()
    assert health is not None
    assert health["status"] == "ok"


@pytest.fixture
async def corpus_gateway(kafka: str, registry: str, applied_registry) -> Any:
    view = RegistryView(KafkaSettings(bootstrap_servers=kafka))
    await view.start()
    limits = {"max_body_bytes": MAX_BODY_BYTES, "rate_per_s": 1000, "burst": 1000}
    async with served_gateway(view, kafka, registry, {"nida": SECRET}, **limits) as (port, _):
        yield port
    await view.stop()


@pytest.mark.http
async def test_every_gateway_case_gets_its_status_error_and_field(
    kafka: str, corpus_gateway: int
) -> None:
    port = corpus_gateway
    base = f"http://127.0.0.1:{port}"
    async with (
        aiohttp.ClientSession(base_url=base) as http,
        http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_auth("nida", SECRET)},
        ) as response,
    ):
        token = (await response.json())["access_token"]
    wrong: list[tuple[str, Any, Any]] = []
    for case in GATEWAY_CASES:
        request = case.build()
        auth = f"Bearer {token}" if request.auth is None else request.auth
        response = await raw_http.send(port, request, auth)
        assert response.status != 500, (case.name, response.body[:300])
        body = response.json()
        assert "Traceback" not in response.body.decode("utf-8", "replace")
        got = (response.status, body.get("error"), body.get("field"))
        if got != (case.status, case.error, case.field):
            wrong.append((case.name, (case.status, case.error, case.field), (*got, body)))
    assert not wrong, "\n".join(map(str, wrong))

    # After all that, valid requests still get through to the bus.
    event = structured()
    accepted = raw_http.GatewayRequest("/v1/events", json.dumps(event).encode())
    response = await raw_http.send(port, accepted, f"Bearer {token}")
    assert response.status == 202, response.body
    text = json.dumps(push_data(), separators=(",", ":"))
    pushed = raw_http.GatewayRequest(
        "/engine/esb/push-request", push_text(text, signed(text)).encode(), "application/json"
    )
    response = await raw_http.send(port, pushed, f"Bearer {token}")
    assert response.status == 202, response.body
    push_id = json.loads(response.body)["data"]["esbBody"]["eventId"]
    records = await _collect(kafka, ["esb.ingress.nida"], {event["id"], push_id}, wait_s=20)
    assert {dict(r.headers)["ce_id"].decode() for r in records} == {event["id"], push_id}


@pytest.mark.timeout(240)
async def test_a_header_name_that_is_not_utf8_is_rejected_and_the_worker_stays_up(
    kafka: str, registry: str, start_worker
) -> None:
    """One batch: valid, valid, a valid event with a non-UTF-8 header name, valid. The
    Kafka client's strict decoding of that name used to stop the worker for good."""
    worker = start_worker()
    forge = Forge(await _schema_ids(registry))
    run = uuid.uuid4().hex
    goods = [forge.good() for _ in range(3)]
    bad = forge.good()
    consumer = await _consumer_at_end(kafka, REJECTED)
    # Not idempotent: aiokafka only lets its own builder carry a producer id.
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        batch = producer.create_batch()
        batch._builder = _DefaultRecordBatchBuilderPy(  # the pure-Python one sends raw names
            2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0,
            batch_size=1 << 20,
        )  # fmt: skip
        sent = [goods[0], goods[1], bad, goods[2]]
        for n, record in enumerate(sent):
            marks = [("corpus_run", run.encode()), ("corpus_case", f"raw-name-{n}".encode())]
            extra = [(RawName(b"x-trace-\xff\xfe"), b"1")] if record is bad else []
            batch.append(
                key=record.key, value=record.value, timestamp=None,
                headers=[*record.headers, *extra, *marks],
            )  # fmt: skip
        batch.close()
        await (await producer.send_batch(batch, bad.topic, partition=0))
        late = forge.good()  # and the partition goes on after it
        await producer.send_and_wait(
            late.topic, late.value, key=late.key, headers=list(late.headers)
        )
        rejected = await _rejected_copies(consumer, run, 1, worker)
        expected = {(r.first("ce_id") or b"").decode() for r in [*goods, late]}
        records = await _collect(kafka, [DELIVERED], expected, wait_s=60)
    finally:
        await producer.stop()
        await consumer.stop()

    assert worker.process.poll() is None, worker.log_path.read_text()[-3000:]
    assert list(rejected) == ["raw-name-2"]
    headers = dict(rejected["raw-name-2"].headers)
    assert headers["esb_reason"] == b"invalid-header"
    shown = b"x-trace-\xff\xfe".decode(errors="backslashreplace")  # x-trace-\\xff\\xfe
    assert (
        headers["esb_detail"] == f"header {len(bad.headers)} name {shown!r} is not UTF-8".encode()
    )
    assert headers["ce_id"] == bad.first("ce_id")
    assert {dict(r.headers)["ce_id"].decode() for r in records} == expected
    assert rejected["raw-name-2"].value == bad.value  # the record itself is kept, not dropped
