"""The pipeline on the real broker and registry, run as real ``govesb worker`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from typer.testing import CliRunner

from connectors.cli import app
from connectors.http_sink.sink import DELIVERY_CONTENT_TYPES
from streams.client.consuming import assign_topics
from streams.client.publisher import Publisher
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore
from streams.contract.envelope import Envelope
from streams.contract.jsonavro import to_json
from streams.contract.signing import load_private_key, verify_event
from streams.pipeline.routing import minimise
from streams.registry.model import load_registry
from streams.registry.view import RegistryView
from streams.settings import REPO_ROOT, KafkaSettings, SchemaRegistrySettings
from tests.unit.pipeline_fixtures import KEY_IDS, sample

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]

CATALOG = Catalog.load()
REGISTRY, _ = load_registry(REPO_ROOT / "deploy" / "registry.example.yaml")
SUBSCRIPTIONS = REGISTRY.subscriptions if REGISTRY else {}


def _publisher(kafka: str, registry: str, institution: str) -> Publisher:
    return Publisher.connect(
        institution=institution,
        system="test",
        key_id=KEY_IDS[institution],
        key=load_private_key((REPO_ROOT / f"deploy/demo-keys/{institution}.key.pem").read_text()),
        kafka=KafkaSettings(bootstrap_servers=kafka),
        schema_registry=SchemaRegistrySettings(url=registry),
        catalog=CATALOG,
    )


async def _collect(
    kafka: str, topics: list[str], event_ids: set[str], wait_s: float = 60.0
) -> list[Any]:
    """Records of ``topics`` carrying one of ``event_ids``: until each id was seen, or timeout."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[Any] = []
    try:
        await assign_topics(consumer, topics)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while {dict(r.headers)["ce_id"].decode() for r in found} < event_ids:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        found.extend(
                            r for r in batch
                            if dict(r.headers).get("ce_id", b"").decode() in event_ids
                        )  # fmt: skip
        return found
    finally:
        await consumer.stop()


async def _decode(registry: str, records: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    store = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
    out = []
    for record in records:
        headers = dict(record.headers)
        if headers["content-type"] == b"application/json":  # an HTTP agreement's body
            body = json.loads(record.value)
        else:
            body = to_json((await store.decode(record.value)).record)
        out.append((headers["ce_id"].decode(), headers["esb_subscription"].decode(), body))
    return out


async def test_events_from_three_publishers_reach_exactly_what_agreements_allow(
    kafka: str, registry: str, start_worker
) -> None:
    worker = start_worker()
    expected: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # subscriber -> id -> body
    order: dict[str, list[str]] = defaultdict(list)  # business key -> ids in publish order
    rejected: dict[str, str] = {}  # event id -> reason

    async with _publisher(kafka, registry, "nida") as nida:
        for n in range(6):
            nin = f"1990011414101000{n % 3:04d}"
            citizen = sample("tz.go.nida.CitizenRegistered", nin=nin, firstName=f"Neema{n}")
            event_id = await nida.publish("tz.go.nida.CitizenRegistered", citizen)
            expected["tra"][event_id] = minimise(citizen, SUBSCRIPTIONS["tra-citizen-identity"])
            order[nin].append(event_id)
        duplicate_of = event_id
        again = await nida.publish("tz.go.nida.CitizenRegistered", citizen, event_id=event_id)
        assert again == duplicate_of

    async with _publisher(kafka, registry, "rita") as rita:
        for n in range(4):
            death = sample(
                "tz.go.rita.DeathRegistered",
                entryNumber=f"20045{n:05d}",
                deceasedNin=None if n == 3 else f"1948061122103000{n:04d}",
            )
            event_id = await rita.publish("tz.go.rita.DeathRegistered", death)
            if n != 3:
                for sub, subscriber in (("nida-deaths", "nida"), ("utumishi-deaths", "utumishi")):
                    expected[subscriber][event_id] = minimise(death, SUBSCRIPTIONS[sub])

    v1_fields = {
        f["name"] for f in CATALOG.get("tz.go.tra.TaxPaymentReceived").history[0]["fields"]
    }
    async with _publisher(kafka, registry, "tra") as tra:
        for n in range(5):
            payment = sample(
                "tz.go.tra.TaxPaymentReceived", receiptNumber=f"R-{n}", taxType="STAMP_DUTY"
            )
            event_id = await tra.publish("tz.go.tra.TaxPaymentReceived", payment)
            as_v1 = {k: v for k, v in payment.items() if k in v1_fields}
            expected["ardhi"][event_id] = minimise(as_v1, SUBSCRIPTIONS["ardhi-stamp-duty"])
            order[payment["tin"]].append(event_id)
        vat = sample("tz.go.tra.TaxPaymentReceived", receiptNumber="R-VAT", taxType="VAT")
        not_routed = await tra.publish("tz.go.tra.TaxPaymentReceived", vat)

        # Bad input through the same ingress topics.
        entry = CATALOG.get("tz.go.tra.TaxPaymentReceived")
        schema_id = await tra._schemas.id_for(entry)
        good = tra.prepare(entry, schema_id, payment)
        tampered = bytearray(good.value)
        tampered[-2] ^= 0x01
        raw = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
        await raw.start()
        try:
            cases = [
                ("esb.ingress.tra", bytes(tampered), good.headers, "bad-signature"),
                ("esb.ingress.tra", b'{"json": true}', good.headers, "wire-format"),
                ("esb.ingress.rita", good.value, good.headers, "source-mismatch"),
            ]
            for topic, value, headers, reason in cases:
                event = tra.prepare(entry, schema_id, payment)
                ids = dict(event.headers)
                headers = [(k, ids[k] if k == "ce_id" else v) for k, v in headers]
                await raw.send_and_wait(topic, value, key=good.key, headers=headers)
                rejected[ids["ce_id"].decode()] = reason
            unknown_key = [
                (k, b"tra-000000000000" if k == "ce_sigkeyid" else v)
                for k, v in tra.prepare(entry, schema_id, payment).headers
            ]
            await raw.send_and_wait(
                "esb.ingress.tra", good.value, key=good.key, headers=unknown_key
            )
            rejected[dict(unknown_key)["ce_id"].decode()] = "unknown-key"
        finally:
            await raw.stop()

    # Every subscriber receives exactly what its agreement allows, field by field.
    for subscriber, bodies in expected.items():
        records = await _collect(kafka, [f"esb.deliver.{subscriber}"], set(bodies))
        decoded = await _decode(registry, records)
        assert {event_id: body for event_id, _, body in decoded} == {
            event_id: to_json(body) for event_id, body in bodies.items()
        }
        view = RegistryView(KafkaSettings(bootstrap_servers=kafka))
        await view.start(follow=False)
        await view.stop()
        for record in records:  # re-signed by the bus
            envelope = Envelope.from_headers(record.headers, accept=DELIVERY_CONTENT_TYPES)
            assert envelope.sig_key_id == "ega-d06f8e0a5d19"
            verify_event(
                view.keyring, envelope.sig_key_id, envelope.signature or "", envelope.id,
                envelope.source, envelope.type, envelope.time, record.value,
            )  # fmt: skip
        # Per-key order is kept.
        for key, ids in order.items():
            mine = [dict(r.headers)["ce_id"].decode() for r in records if r.key == key.encode()]
            assert mine == [i for i in ids if i in bodies]
    # Rejections carry their reason; the good events around them were delivered (above).
    rejected[duplicate_of] = "duplicate"
    records = await _collect(
        kafka, ["esb.rejected.tra", "esb.rejected.rita", "esb.rejected.nida"], set(rejected)
    )
    reasons = {
        dict(r.headers)["ce_id"].decode(): dict(r.headers)["esb_reason"].decode() for r in records
    }
    assert reasons == rejected
    # The VAT payment matched no agreement: delivered to no one, rejected by no one.
    stray = await _collect(kafka, ["esb.deliver.ardhi", "esb.rejected.tra"], {not_routed}, wait_s=3)
    assert stray == []

    metrics = worker.metrics()
    assert 'govesb_pipeline_rejections_total{publisher="tra",reason="bad-signature"}' in metrics
    assert "govesb_pipeline_processing_seconds_bucket" in metrics
    assert "govesb_consumer_lag{" in metrics

    # The audit chain of this worker verifies.
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["--bootstrap", kafka, "audit", "verify"]
    )
    assert result.exit_code == 0, result.output
    assert "intact" in result.output


async def test_a_registry_change_mid_stream_reroutes_without_restart(
    kafka: str, registry: str, cli_options: list[str], start_worker, tmp_path: Path
) -> None:
    start_worker()
    runner = CliRunner()
    identity = SUBSCRIPTIONS["tra-citizen-identity"]
    async with _publisher(kafka, registry, "nida") as nida:
        before = await nida.publish(
            "tz.go.nida.CitizenRegistered", sample("tz.go.nida.CitizenRegistered")
        )
        [record] = await _collect(kafka, ["esb.deliver.tra"], {before})
        [(_, _, body)] = await _decode(registry, [record])
        assert set(body) == set(identity.fields)

        document = yaml.safe_load((REPO_ROOT / "deploy" / "registry.example.yaml").read_text())
        document["catalog"] = str(REPO_ROOT / "schemas" / "catalog.yaml")
        changed = next(s for s in document["subscriptions"] if s["id"] == identity.id)
        changed["fields"] = ["nin", "firstName", "lastName"]
        changed["mask"] = []
        edited = tmp_path / "registry.yaml"
        edited.write_text(yaml.safe_dump(document))
        try:
            applied = await asyncio.to_thread(
                runner.invoke, app, [*cli_options, "registry", "apply", str(edited)]
            )
            assert "records written: 1" in applied.output, applied.output
            deadline = asyncio.get_running_loop().time() + 20
            while True:  # the worker picks the change up within seconds
                after = await nida.publish(
                    "tz.go.nida.CitizenRegistered", sample("tz.go.nida.CitizenRegistered")
                )
                [record] = await _collect(kafka, ["esb.deliver.tra"], {after})
                [(_, _, body)] = await _decode(registry, [record])
                if set(body) == {"nin", "firstName", "lastName"}:
                    break
                assert asyncio.get_running_loop().time() < deadline, body
                await asyncio.sleep(1)
        finally:
            restored = await asyncio.to_thread(
                runner.invoke,
                app,
                [
                    *cli_options,
                    "registry",
                    "apply",
                    str(REPO_ROOT / "deploy/registry.example.yaml"),
                ],
            )
            assert restored.exit_code == 0, restored.output


async def test_a_tampered_audit_log_does_not_verify(
    kafka: str, registry: str, cli_options: list[str], start_worker, topic_factory
) -> None:
    start_worker()
    async with _publisher(kafka, registry, "nida") as nida:
        ids = {
            await nida.publish(
                "tz.go.nida.CitizenRegistered", sample("tz.go.nida.CitizenRegistered")
            )
            for _ in range(4)
        }
    delivered = await _collect(kafka, ["esb.deliver.tra"], ids)
    assert {dict(r.headers)["ce_id"].decode() for r in delivered} == ids
    from streams.audit.verify import read_audit

    async with asyncio.timeout(30):  # audit records are written with the deliveries
        while True:
            records = await read_audit(KafkaSettings(bootstrap_servers=kafka), "esb.audit")
            mine = [r for r in records if r[2] and json.loads(r[2])["event_id"] in ids]
            if len(mine) == len(ids):
                break
            await asyncio.sleep(0.5)
    chain = json.loads(mine[0][2])["chain"]
    whole = [r for r in records if r[2] and json.loads(r[2])["chain"] == chain]
    assert len(whole) >= 4

    runner = CliRunner()
    copy_ok, copy_cut, copy_edited = (topic_factory("audit") for _ in range(3))
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        for index, (_, _, value) in enumerate(whole):
            await producer.send_and_wait(copy_ok, value, key=chain.encode())
            if index != 1:
                await producer.send_and_wait(copy_cut, value, key=chain.encode())
            body = json.loads(value)
            if index == 2:
                body["outcome"] = "received" if body["outcome"] != "received" else "routed"
            await producer.send_and_wait(copy_edited, json.dumps(body).encode(), key=chain.encode())
    finally:
        await producer.stop()

    def verify(topic: str) -> Any:
        return runner.invoke(app, [*cli_options, "audit", "verify", "--topic", topic])

    ok = await asyncio.to_thread(verify, copy_ok)
    assert ok.exit_code == 0, ok.output
    cut = await asyncio.to_thread(verify, copy_cut)
    assert cut.exit_code == 1
    assert "partition 0 offset 1: seq 2 follows seq 0 (records missing)" in cut.output
    edited = await asyncio.to_thread(verify, copy_edited)
    assert edited.exit_code == 1
    assert "partition 0 offset 2: seq 2 was altered (hash mismatch)" in edited.output


async def test_two_workers_split_partitions_and_lose_nothing_when_one_stops(
    kafka: str, registry: str, start_worker
) -> None:
    group = f"test-pipeline-{uuid.uuid4().hex[:8]}"
    first = start_worker(group)
    second = start_worker(group)
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # the group rebalances until both hold partitions
        a = first.health()["checks"]["partitions"]["assigned"]
        b = second.health()["checks"]["partitions"]["assigned"]
        if a and b:
            break
        assert asyncio.get_running_loop().time() < deadline, (a, b)
        await asyncio.sleep(0.5)
    ids: set[str] = set()
    async with _publisher(kafka, registry, "nida") as nida:
        for n in range(40):
            citizen = sample("tz.go.nida.CitizenRegistered", nin=f"2000010100000000{n:04d}")
            ids.add(await nida.publish("tz.go.nida.CitizenRegistered", citizen))
            if n == 20:
                code, took = await asyncio.to_thread(second.stop)
                assert code == 0
                assert took < 30
    records = await _collect(kafka, ["esb.deliver.tra"], ids, wait_s=90)
    assert {dict(r.headers)["ce_id"].decode() for r in records} == ids


async def test_a_worker_stops_within_its_bound_and_a_restart_delivers_the_rest(
    kafka: str, registry: str, start_worker
) -> None:
    group = f"test-pipeline-{uuid.uuid4().hex[:8]}"
    worker = start_worker(group)
    ids: set[str] = set()
    async with _publisher(kafka, registry, "rita") as rita:
        for n in range(30):
            death = sample("tz.go.rita.DeathRegistered", entryNumber=f"30045{n:05d}")
            ids.add(await rita.publish("tz.go.rita.DeathRegistered", death))
        code, took = await asyncio.to_thread(worker.stop)
        assert code == 0
        assert took < 25, f"shutdown took {took:.1f}s"
        for n in range(30, 40):
            death = sample("tz.go.rita.DeathRegistered", entryNumber=f"30045{n:05d}")
            ids.add(await rita.publish("tz.go.rita.DeathRegistered", death))
    start_worker(group)
    records = await _collect(kafka, ["esb.deliver.nida"], ids, wait_s=90)
    assert {dict(r.headers)["ce_id"].decode() for r in records} == ids


async def test_a_third_worker_joining_a_group_under_load_loses_nothing(
    kafka: str, registry: str, start_worker
) -> None:
    """Two workers of one group are working through a stream when a third joins: the group
    rebalances while events are being fetched, buffered and handed to the agents. Small stream
    buffers (16 records) put full and draining buffers inside the rebalance too."""
    group = f"test-pipeline-{uuid.uuid4().hex[:8]}"
    env = {"GOVESB_STREAM_BUFFER_MAXSIZE": "16"}
    first = start_worker(group, env)
    second = start_worker(group, env)
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # the group rebalances until both hold partitions
        a = first.health()["checks"]["partitions"]["assigned"]
        b = second.health()["checks"]["partitions"]["assigned"]
        if a and b:
            break
        assert asyncio.get_running_loop().time() < deadline, (a, b)
        await asyncio.sleep(0.5)
    ids: set[str] = set()
    joined = asyncio.Event()

    async def publish(nida: Publisher, count: int) -> None:
        for start in range(len(ids), len(ids) + count, 20):
            citizens = [
                sample("tz.go.nida.CitizenRegistered", nin=f"2000010100000{n:07d}")
                for n in range(start, start + 20)
            ]
            ids.update(
                await asyncio.gather(
                    *(nida.publish("tz.go.nida.CitizenRegistered", c) for c in citizens)
                )
            )

    async with _publisher(kafka, registry, "nida") as nida:
        await publish(nida, 400)  # a backlog for the two

        async def stream_until_joined() -> None:
            while not joined.is_set() and len(ids) < 20_000:
                await publish(nida, 100)

        streaming = asyncio.create_task(stream_until_joined())
        third = await asyncio.to_thread(start_worker, group, env)  # returns holding partitions
        joined.set()
        await streaming
        await publish(nida, 400)  # and more once the three share the partitions
    records = await _collect(kafka, ["esb.deliver.tra"], ids, wait_s=120)
    assert {dict(r.headers)["ce_id"].decode() for r in records} == ids
    assigned = [w.health()["checks"]["partitions"]["assigned"] for w in (first, second, third)]
    assert all(assigned), assigned
