"""Chaos on the worker's output path: the broker refuses what the worker writes.

- A record the broker accepts on ingress (1,048,500 bytes with its headers; the broker takes
  1,048,588 a batch) is rejected as ``oversize``, but its rejected copy — the record plus
  the bus's reason headers — is over the producer's 1 MiB (1,048,576-byte) request limit.
  The copy is cut (its value dropped, header ``esb_cut``), the reason reaches
  ``esb.rejected.nida``, and every valid event behind it on the same partition, and of
  other institutions, is delivered.
- A delivery topic that refuses every record (its ``max.message.bytes`` too small for
  them): each refused delivery becomes an ``undeliverable`` rejection to the publisher
  naming topic, size and error, while the same events still reach their other subscriber.
- A delivery topic that refuses some records of a partition and takes the others: the
  refused ones are undeliverable, the ones behind them on the same partition delivered
  (after a refused batch the broker finds aiokafka's idempotent producer out of sequence),
  with either output client.
- A rejection topic that takes nothing (``esb.rejected.tra``): the partition of the record
  whose reason cannot be written is held (never acked), ``/health`` is 503 naming the
  record, and the other institutions' events flow on.
- A delivery topic deleted while the worker runs: nothing stalls, every event reaches the
  other agreement and the deleted topic again or comes back as undeliverable.

The module has a broker and registry of its own: it writes records near the size limits
and changes a delivery topic's configuration, which must not reach other tests' workers.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from deploy.kafka.launcher import LocalBus
from deploy.worker import WorkerProcess
from streams.client.consuming import assign_topics
from streams.contract.codec import SchemaStore
from streams.pipeline.outputs import record_size
from streams.pipeline.process import Output
from tests.corpus.malformed import CITIZEN, PAYMENT, Forge, KafkaRecord
from tests.integration.chaos import (
    Stream,
    apply_registry,
    death,
    header,
    new_system,
    own_bus,
    read_topic,
    registry_document,
    rita_publisher,
    wait_until,
    worker_process,
)
from tests.unit.pipeline_fixtures import CATALOG

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.chaos, pytest.mark.slow]
NEAR_LIMIT_BYTES = 1_048_500  # the ingress record as aiokafka counts it: the broker takes it


@pytest.fixture(scope="module")
def outputs_bus(
    tmp_path_factory: pytest.TempPathFactory, test_environment: Any
) -> Iterator[LocalBus]:
    yield from own_bus(tmp_path_factory.mktemp("chaos-outputs-bus"), test_environment.ci)


async def _forge(registry: str) -> Forge:
    store = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
    return Forge({name: await store.id_for(CATALOG.get(name)) for name in (CITIZEN, PAYMENT)})


def _padded(record: KafkaRecord, total: int) -> KafkaRecord:
    """``record`` with zero bytes after its Avro payload, ``total`` bytes in all (as aiokafka
    counts a record); validation rejects it as ``oversize`` before decoding."""
    value = record.value or b""
    size = record_size(Output(record.topic, record.key, value, record.headers))
    return record.with_value(value + b"\x00" * (total - size))


async def _read_all(kafka: str, topic: str, want: set[str], wait_s: float = 90.0) -> list[Any]:
    """Records of ``topic`` (from the beginning) until every ``ce_id`` of ``want`` was seen."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=4_000_000,
                                fetch_max_bytes=8_000_000)  # fmt: skip
    await consumer.start()
    found: list[Any] = []
    try:
        await assign_topics(consumer, [topic])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not want <= {header(r, "ce_id") for r in found}:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                found.extend(batch)
        return [r for r in found if header(r, "ce_id") in want]
    finally:
        await consumer.stop()


def _metric(worker: WorkerProcess, line_start: str) -> float:
    return _metric_in(worker.metrics(), line_start)


def _metric_in(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.timeout(400)
async def test_a_record_whose_rejected_copy_is_too_large_is_cut_and_every_valid_event_flows(
    outputs_bus: LocalBus, tmp_path: Path
) -> None:
    kafka, registry = outputs_bus.bootstrap, outputs_bus.registry_url
    await apply_registry(kafka, registry, registry_document(None), tmp_path)
    worker = worker_process(kafka, registry, tmp_path / "worker.log")
    try:
        forge = await _forge(registry)
        producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True,
                                    max_request_size=2_000_000)  # fmt: skip
        await producer.start()
        try:
            # one business key: the big record and the valid ones share one partition
            before = [forge.good() for _ in range(5)]
            big = _padded(forge.good(), NEAR_LIMIT_BYTES)
            after = [forge.good() for _ in range(5)]
            for record in [*before, big, *after]:
                await producer.send_and_wait(record.topic, record.value, key=record.key,
                                             headers=list(record.headers))  # fmt: skip
        finally:
            await producer.stop()
        system = new_system()
        async with rita_publisher(kafka, registry, system) as publisher:
            deaths = Stream(publisher, keys=3, prefix=f"O{uuid.uuid4().hex[:6]}")
            for n in range(10):
                await deaths.publish(n)

        ids = [(r.first("ce_id") or b"").decode() for r in [*before, *after]]
        big_id = (big.first("ce_id") or b"").decode()
        delivered = await _read_all(kafka, "esb.deliver.tra", set(ids))
        rejected = await _read_all(kafka, "esb.rejected.nida", {big_id})
        death_deliveries = await read_topic(kafka, "esb.deliver.nida",
                                            f"/institutions/rita/systems/{system}",
                                            want=deaths.ids(), wait_s=90)  # fmt: skip
        await wait_until(lambda: _metric(worker, "govesb_pipeline_in_flight ") == 0, 30,
                         "nothing in flight")  # fmt: skip
        health = worker.health()
        metrics = worker.metrics()
    finally:
        worker.stop()

    # every valid event of the same partition, before and after the big one, was delivered
    assert sorted({header(r, "ce_id") for r in delivered}) == sorted(ids)
    assert {header(r, "ce_id") for r in death_deliveries} == deaths.ids()
    # the big one came back once, with its reason, cut to fit, saying what was dropped
    assert len(rejected) >= 1
    copy = rejected[0]
    assert header(copy, "esb_reason") == "oversize"
    assert header(copy, "ce_id") == big_id
    assert copy.value == b""
    assert header(copy, "esb_cut").startswith(f"value dropped ({len(big.value or b'')} bytes)")
    assert "MessageSizeTooLargeError" in header(copy, "esb_cut")
    assert health is not None
    assert health["status"] == "ok", health
    assert 'govesb_pipeline_rejections_cut_total{publisher="nida"} 1.0' in metrics
    assert 'govesb_pipeline_rejections_total{publisher="nida",reason="oversize"} 1.0' in metrics
    assert "govesb_pipeline_halted_partitions 0.0" in metrics
    log = (tmp_path / "worker.log").read_text()
    assert "cannot queue a record" not in log


@pytest.mark.timeout(400)
async def test_a_delivery_topic_that_refuses_records_gets_undeliverable_rejections_only(
    outputs_bus: LocalBus, tmp_path: Path
) -> None:
    kafka, registry = outputs_bus.bootstrap, outputs_bus.registry_url
    await apply_registry(kafka, registry, registry_document(None), tmp_path)
    # esb.deliver.utumishi now takes no batch over 200 bytes: every delivery is refused
    # (MESSAGE_TOO_LARGE, not retriable), while esb.deliver.nida takes the same events.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, "esb.deliver.utumishi",
                                  configs={"max.message.bytes": "200"})  # fmt: skip
        await admin.alter_configs([resource])
        worker = worker_process(kafka, registry, tmp_path / "worker.log")
        try:
            system = new_system()
            source = f"/institutions/rita/systems/{system}"
            async with rita_publisher(kafka, registry, system) as publisher:
                deaths = Stream(publisher, keys=4, prefix=f"U{uuid.uuid4().hex[:6]}")
                for n in range(12):
                    await deaths.publish(n)
            to_nida = await read_topic(kafka, "esb.deliver.nida", source, want=deaths.ids(),
                                       wait_s=90)  # fmt: skip
            rejections = await read_topic(kafka, "esb.rejected.rita", source, want=deaths.ids(),
                                          wait_s=90)  # fmt: skip
            to_utumishi = await read_topic(kafka, "esb.deliver.utumishi", source, idle_s=2)
            await wait_until(lambda: _metric(worker, "govesb_pipeline_in_flight ") == 0, 30,
                             "nothing in flight")  # fmt: skip
            health = worker.health()
            metrics = worker.metrics()
        finally:
            worker.stop()
    finally:
        resource = ConfigResource(ConfigResourceType.TOPIC, "esb.deliver.utumishi",
                                  configs={"max.message.bytes": "1048588"})  # fmt: skip
        await admin.alter_configs([resource])
        await admin.close()

    assert {header(r, "ce_id") for r in to_nida} == deaths.ids()  # the other agreement holds
    assert to_utumishi == []
    assert {header(r, "ce_id") for r in rejections} == deaths.ids()
    for rejection in rejections:
        assert header(rejection, "esb_reason") == "undeliverable"
        assert header(rejection, "esb_refused_topic") == "esb.deliver.utumishi"
        detail = header(rejection, "esb_detail")
        assert detail.startswith("esb.deliver.utumishi refused the "), detail
        assert "MessageSizeTooLargeError" in detail
        assert int(header(rejection, "esb_refused_bytes")) > 200
        assert rejection.value  # the ingress record, as the publisher sent it
    assert health is not None
    assert health["status"] == "ok", health
    # (the worker reads rita's ingress from the beginning: earlier tests' deaths count too)
    undeliverable = 'govesb_pipeline_undeliverable_total{topic="esb.deliver.utumishi"} '
    assert _metric_in(metrics, undeliverable) >= len(deaths.ids())
    assert 'reason="undeliverable"' in metrics


@pytest.mark.timeout(400)
@pytest.mark.parametrize("output_client", ["librdkafka", "aiokafka"])
async def test_records_refused_between_taken_ones_on_one_partition_do_not_stop_the_others(
    outputs_bus: LocalBus, tmp_path: Path, output_client: str
) -> None:
    kafka, registry = outputs_bus.bootstrap, outputs_bus.registry_url
    await apply_registry(kafka, registry, registry_document(None), tmp_path)
    # esb.deliver.utumishi takes batches up to 3,000 bytes: the usual deaths, not those with
    # a 4,000-character first name. After a refused batch, an idempotent producer's next
    # batch to that partition is out of sequence for the broker: the worker must recover.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, "esb.deliver.utumishi",
                                  configs={"max.message.bytes": "3000"})  # fmt: skip
        await admin.alter_configs([resource])
        worker = worker_process(kafka, registry, tmp_path / "worker.log",
                                output_client=output_client)  # fmt: skip
        try:
            system = new_system()
            source = f"/institutions/rita/systems/{system}"
            big: set[str] = set()
            async with rita_publisher(kafka, registry, system) as publisher:
                deaths = Stream(publisher, keys=1, prefix=f"S{uuid.uuid4().hex[:6]}")
                for n in range(12):
                    if n % 4 == 1:
                        payload = death(deaths.key(n), n, firstName="N" * 4000)
                        big.add(await deaths.publish(n, payload))
                        await asyncio.sleep(0.05)  # its own batch, not one with the others
                    else:
                        await deaths.publish(n)
                        await asyncio.sleep(0.05)
            small = deaths.ids() - big
            to_utumishi = await read_topic(kafka, "esb.deliver.utumishi", source, want=small,
                                           wait_s=90)  # fmt: skip
            rejections = await read_topic(kafka, "esb.rejected.rita", source, want=big,
                                          wait_s=60)  # fmt: skip
            to_nida = await read_topic(kafka, "esb.deliver.nida", source, want=deaths.ids(),
                                       wait_s=60)  # fmt: skip
            health = worker.health()
            exited = worker.process.poll()
        finally:
            worker.stop()
    finally:
        resource = ConfigResource(ConfigResourceType.TOPIC, "esb.deliver.utumishi",
                                  configs={"max.message.bytes": "1048588"})  # fmt: skip
        await admin.alter_configs([resource])
        await admin.close()

    assert exited is None  # it did not crash
    assert {header(r, "ce_id") for r in to_utumishi} == small
    assert {header(r, "ce_id") for r in to_nida} == deaths.ids()
    assert {header(r, "ce_id") for r in rejections} == big
    assert {header(r, "esb_reason") for r in rejections} == {"undeliverable"}
    assert health is not None
    assert health["status"] == "ok", health


@pytest.mark.timeout(400)
async def test_a_delivery_topic_deleted_while_the_worker_runs_stalls_nothing(
    outputs_bus: LocalBus, tmp_path: Path
) -> None:
    kafka, registry = outputs_bus.bootstrap, outputs_bus.registry_url
    await apply_registry(kafka, registry, registry_document(None), tmp_path)
    worker = worker_process(kafka, registry, tmp_path / "worker.log")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        system = new_system()
        source = f"/institutions/rita/systems/{system}"
        async with rita_publisher(kafka, registry, system) as publisher:
            deaths = Stream(publisher, keys=4, prefix=f"D{uuid.uuid4().hex[:6]}")
            for n in range(6):
                await deaths.publish(n)
            first = deaths.ids()
            await read_topic(kafka, "esb.deliver.utumishi", source, want=first, wait_s=90)
            # the worker's producer knows the topic's partitions: its next records go there
            await admin.delete_topics(["esb.deliver.utumishi"])
            for n in range(6, 12):
                await deaths.publish(n)
        second = deaths.ids() - first
        to_nida = await read_topic(kafka, "esb.deliver.nida", source, want=deaths.ids(),
                                   wait_s=120)  # fmt: skip
        await wait_until(lambda: _metric(worker, "govesb_pipeline_in_flight ") == 0, 120,
                         "every event settled")  # fmt: skip
        to_utumishi = await read_topic(kafka, "esb.deliver.utumishi", source, idle_s=3)
        rejections = await read_topic(kafka, "esb.rejected.rita", source, idle_s=3)
        health = worker.health()
    finally:
        worker.stop()
        await admin.close()

    # the other agreement got every event, before and after the deletion
    assert {header(r, "ce_id") for r in to_nida} == deaths.ids()
    # each event after it reached the topic again (the broker re-creates it on the
    # producer's metadata request here) or came back as undeliverable: none is lost or stuck
    undeliverable = {header(r, "ce_id") for r in rejections
                     if header(r, "esb_reason") == "undeliverable"}  # fmt: skip
    assert second <= {header(r, "ce_id") for r in to_utumishi} | undeliverable
    assert health is not None
    assert health["status"] == "ok", health


@pytest.mark.timeout(400)
async def test_a_partition_whose_rejection_cannot_be_written_is_held_and_health_says_503(
    outputs_bus: LocalBus, tmp_path: Path
) -> None:
    kafka, registry = outputs_bus.bootstrap, outputs_bus.registry_url
    await apply_registry(kafka, registry, registry_document(None), tmp_path)
    # esb.rejected.tra takes nothing over 200 bytes: not even a rejection cut to its reason
    # (tra publishes nothing else in this module: its record is the first to be held)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, "esb.rejected.tra",
                                  configs={"max.message.bytes": "200"})  # fmt: skip
        await admin.alter_configs([resource])
        worker = worker_process(kafka, registry, tmp_path / "worker.log")
        try:
            forge = await _forge(registry)
            good = forge.good("tra", PAYMENT)
            value = good.value or b""
            tampered = good.with_value(value[:-1] + bytes([value[-1] ^ 1]))  # bad signature
            producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all",
                                        enable_idempotence=True)  # fmt: skip
            await producer.start()
            try:
                meta = await producer.send_and_wait(tampered.topic, tampered.value,
                                                    key=tampered.key,
                                                    headers=list(tampered.headers))  # fmt: skip
            finally:
                await producer.stop()
            system = new_system()
            async with rita_publisher(kafka, registry, system) as publisher:
                deaths = Stream(publisher, keys=4, prefix=f"H{uuid.uuid4().hex[:6]}")
                for n in range(8):
                    await deaths.publish(n)
            to_nida = await read_topic(kafka, "esb.deliver.nida",
                                       f"/institutions/rita/systems/{system}",
                                       want=deaths.ids(), wait_s=90)  # fmt: skip
            where = f"esb.ingress.tra[{meta.partition}]"

            def halted() -> bool:
                body = _health(worker)[1]
                return where in body.get("checks", {}).get("producer", {}).get(
                    "halted_partitions", {}
                )

            await wait_until(halted, 90, f"{where} held")
            status, health = _health(worker)
            metrics = worker.metrics()
        finally:
            worker.stop()
    finally:
        resource = ConfigResource(ConfigResourceType.TOPIC, "esb.rejected.tra",
                                  configs={"max.message.bytes": "1048588"})  # fmt: skip
        await admin.alter_configs([resource])
        await admin.close()

    # the other institutions' events flowed on
    assert {header(r, "ce_id") for r in to_nida} == deaths.ids()
    # the held partition is named with the record and the error, and /health is 503
    assert status == 503
    assert health["status"] == "degraded"
    what = health["checks"]["producer"]["halted_partitions"][where]
    assert f"{where}@{meta.offset}" in what
    assert (good.first("ce_id") or b"").decode() in what
    assert "MessageSizeTooLargeError" in what
    assert "govesb_pipeline_halted_partitions 1.0" in metrics
    log = (tmp_path / "worker.log").read_text()
    assert f"partition {where} halted until the worker restarts" in log


def _health(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the worker's /health, a 503 too ((0, {}) if no answer)."""
    url = f"http://127.0.0.1:{worker.web_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (OSError, ValueError):
        return 0, {}
