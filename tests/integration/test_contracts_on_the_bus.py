"""The event contract on the real broker and registry: interop, apply, publish, tail."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from confluent_kafka.schema_registry import (
    AsyncSchemaRegistryClient,
    SchemaRegistryClient,
    record_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from typer.testing import CliRunner

from connectors.cli import app
from streams.client.consuming import assign_whole_topic
from streams.client.publisher import Publisher
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore
from streams.contract.envelope import Envelope
from streams.contract.jsonavro import from_json
from streams.contract.signing import load_private_key, verify_event
from streams.registry.view import RegistryView
from streams.settings import REPO_ROOT, KafkaSettings, SchemaRegistrySettings

pytestmark = [pytest.mark.kafka, pytest.mark.registry]

SAMPLES = yaml.safe_load((REPO_ROOT / "schemas" / "samples.yaml").read_text())
CATALOG = Catalog.load()
EXAMPLE_TEXT = (REPO_ROOT / "deploy" / "registry.example.yaml").read_text()
BRELA_KEY = load_private_key((REPO_ROOT / "deploy/demo-keys/brela.key.pem").read_text())


async def _records_after(kafka: str, topic: str, start: dict[int, int], want: int) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        for tp in await assign_whole_topic(consumer, topic):
            consumer.seek(tp, start[tp.partition])
        records: list = []
        async with asyncio.timeout(20):
            while len(records) < want:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def _end_offsets(kafka: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None)
    await consumer.start()
    try:
        partitions = await assign_whole_topic(consumer, topic)
        return {tp.partition: o for tp, o in (await consumer.end_offsets(partitions)).items()}
    finally:
        await consumer.stop()


async def test_published_events_are_read_by_confluent_avro_deserializer_and_verify(
    kafka: str, registry: str, applied_registry: Path
) -> None:
    name = "tz.go.brela.CompanyRegistered"
    payload = from_json(CATALOG.get(name).schema, SAMPLES[name])
    start = await _end_offsets(kafka, "esb.ingress.brela")
    async with Publisher.connect(
        institution="brela",
        system="ors",
        key_id="brela-a24c4621961c",
        key=BRELA_KEY,
        kafka=KafkaSettings(bootstrap_servers=kafka),
        schema_registry=SchemaRegistrySettings(url=registry),
    ) as publisher:
        event_id = await publisher.publish(name, payload)

    [record] = [
        r
        for r in await _records_after(kafka, "esb.ingress.brela", start, 1)
        if dict(r.headers)["ce_id"] == event_id.encode()
    ]
    context = SerializationContext("esb.ingress.brela", MessageField.VALUE)
    decoded = AvroDeserializer(SchemaRegistryClient({"url": registry}))(record.value, context)
    assert decoded == payload
    assert record.key == SAMPLES[name]["registrationNumber"].encode()

    view = RegistryView(KafkaSettings(bootstrap_servers=kafka))
    await view.start(follow=False)
    await view.stop()
    envelope = Envelope.from_headers(record.headers)
    assert view.key_owner(envelope.sig_key_id or "") == "brela"
    verify_event(
        view.keyring,
        envelope.sig_key_id or "",
        envelope.signature or "",
        envelope.id,
        envelope.source,
        envelope.type,
        envelope.time,
        record.value,
    )


async def test_values_from_confluent_avro_serializer_decode_with_our_codec(
    registry: str, applied_registry: Path
) -> None:
    name = "tz.go.moh.PatientReferred"
    event_type = CATALOG.get(name)
    payload = from_json(event_type.schema, SAMPLES[name])
    serializer = AvroSerializer(
        SchemaRegistryClient({"url": registry}),
        (REPO_ROOT / "schemas/moh/PatientReferred.avsc").read_text(),
        conf={"subject.name.strategy": record_subject_name_strategy, "auto.register.schemas": False,
              "use.latest.version": True},
    )  # fmt: skip
    value = serializer(payload, SerializationContext("esb.ingress.moh", MessageField.VALUE))

    store = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
    decoded = await store.decode(value)
    assert decoded.record == payload
    assert decoded.schema.full_name == name
    assert decoded.schema.id == await store.id_for(event_type)


def _topic_config(kafka: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": kafka})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    return {name: entry.value for name, entry in entries.items()}


async def test_apply_creates_the_topics_of_the_design_and_is_idempotent(
    kafka: str, cli_options: list[str], applied_registry: Path
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka})
    topics = admin.list_topics(timeout=10).topics
    for institution in ("nida", "rita", "brela", "tra", "ardhi", "moh", "utumishi"):
        for kind in ("ingress", "rejected", "deliver", "dlq"):
            assert f"esb.{kind}.{institution}" in topics
    assert len(topics["esb.registry"].partitions) == 1
    assert _topic_config(kafka, "esb.registry")["cleanup.policy"] == "compact"
    assert _topic_config(kafka, "esb.audit")["retention.ms"] == "-1"
    assert _topic_config(kafka, "esb.rejected.tra")["retention.ms"] == str(30 * 86_400_000)

    again = await asyncio.to_thread(
        CliRunner().invoke, app, [*cli_options, "registry", "apply", str(applied_registry)]
    )
    assert again.exit_code == 0, again.output
    assert "topics created: 0, records written: 0, removed: 0" in again.output


async def test_a_running_view_sees_an_applied_change_within_seconds(
    kafka: str, cli_options: list[str], applied_registry: Path, tmp_path: Path
) -> None:
    view = RegistryView(KafkaSettings(bootstrap_servers=kafka))
    removed = asyncio.Event()

    def on_change(key: str) -> None:
        if key == "subscription/moh-referrals-high-urgency" and (
            "moh-referrals-high-urgency" not in view.subscriptions
        ):
            removed.set()

    await view.start()
    view.on_change(on_change)  # after the initial load, which replays older tombstones
    try:
        assert view.subscriptions["nida-deaths"].fields == [
            "entryNumber", "deceasedNin", "dateOfDeath", "registeredAt"
        ]  # fmt: skip
        document = yaml.safe_load(EXAMPLE_TEXT)
        document["catalog"] = str(REPO_ROOT / "schemas" / "catalog.yaml")
        changed = next(s for s in document["subscriptions"] if s["id"] == "nida-deaths")
        changed["fields"] = ["entryNumber", "deceasedNin", "dateOfDeath"]
        document["subscriptions"] = [
            s for s in document["subscriptions"] if s["id"] != "moh-referrals-high-urgency"
        ]
        edited = tmp_path / "registry.yaml"
        await asyncio.to_thread(edited.write_text, yaml.safe_dump(document))
        runner = CliRunner()
        try:
            result = await asyncio.to_thread(
                runner.invoke, app, [*cli_options, "registry", "apply", str(edited)]
            )
            assert "records written: 1, removed: 1" in result.output, result.output
            await asyncio.wait_for(removed.wait(), 10)
            assert "moh-referrals-high-urgency" not in view.subscriptions
            assert view.subscriptions["nida-deaths"].fields == [
                "entryNumber", "deceasedNin", "dateOfDeath"
            ]  # fmt: skip
        finally:
            restored = await asyncio.to_thread(
                runner.invoke, app, [*cli_options, "registry", "apply", str(applied_registry)]
            )
            assert "records written: 2, removed: 0" in restored.output
    finally:
        await view.stop()


def test_cli_publish_then_tail_shows_the_decoded_signed_event(
    kafka: str, cli_options: list[str], applied_registry: Path
) -> None:
    runner = CliRunner()
    name = "tz.go.tra.TaxPaymentReceived"
    event_id = str(uuid.uuid4())
    published = runner.invoke(
        app,
        [*cli_options, "publish", "--as", "tra", "--type", name, "--sample", "--system", "itax",
         "--key-file", str(REPO_ROOT / "deploy/demo-keys/tra.key.pem"), "--event-id", event_id],
    )  # fmt: skip
    assert published.exit_code == 0, published.output
    assert published.output.strip() == event_id

    tailed = runner.invoke(
        app, [*cli_options, "tail", "esb.ingress.tra", "--json", "--idle-timeout", "2"]
    )
    assert tailed.exit_code == 0, tailed.output
    views = [json.loads(line) for line in tailed.stdout.splitlines() if line.startswith("{")]
    [view] = [v for v in views if v["headers"].get("ce_id") == event_id]
    assert view["schema"] == name
    assert view["payload"] == SAMPLES[name]
    assert view["headers"]["ce_sigkeyid"] == "tra-3509e6ac2798"
    assert view["key"] == SAMPLES[name]["tin"]


def test_cli_publish_refuses_bad_payloads_with_the_field(
    cli_options: list[str], applied_registry: Path, tmp_path: Path
) -> None:
    payload = dict(SAMPLES["tz.go.nida.CitizenRegistered"], dateOfBirth="14/01/1990")
    data = tmp_path / "citizen.json"
    data.write_text(json.dumps(payload))
    result = CliRunner().invoke(
        app,
        [*cli_options, "publish", "--as", "nida", "--type", "tz.go.nida.CitizenRegistered",
         "--data", str(data), "--key-file", str(REPO_ROOT / "deploy/demo-keys/nida.key.pem")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "CitizenRegistered.dateOfBirth: expected an ISO date (YYYY-MM-DD)" in result.output
    assert "14/01/1990" not in result.output


def test_tail_of_a_missing_topic_is_a_clear_error(cli_options: list[str]) -> None:
    result = CliRunner().invoke(app, [*cli_options, "tail", f"esb.nothing.{uuid.uuid4().hex}"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_confluent_produced_records_without_envelope_show_as_undecodable_in_tail(
    kafka: str, cli_options: list[str], topic_factory
) -> None:
    topic = topic_factory()
    producer = Producer({"bootstrap.servers": kafka})
    producer.produce(topic, value=b'{"not": "avro"}', key=b"k")
    producer.flush(10)
    result = CliRunner().invoke(app, [*cli_options, "tail", topic, "--json", "--max", "1"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout.splitlines()[0])
    assert view["error"].startswith("wire-format:")


def test_times_in_samples_are_utc() -> None:
    moment = from_json(
        CATALOG.get("tz.go.tra.TaxPaymentReceived").schema,
        SAMPLES["tz.go.tra.TaxPaymentReceived"],
    )["paidAt"]
    assert moment.utcoffset() == dt.timedelta(0)
