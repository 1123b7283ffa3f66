"""``govesb dlq`` and ``govesb rejected`` on the real broker: one reader and re-producer.

Each test has topics of its own (an institution name no other test uses), so what the
commands list and send back is exactly what the test wrote.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka.admin import AdminClient, NewTopic
from typer.testing import CliRunner

from connectors.cli import app
from streams.client.consuming import assign_whole_topic

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def institution(kafka: str) -> Iterator[str]:
    """A fresh institution name with its dlq, deliver, rejected and ingress topics."""
    name = f"t{uuid.uuid4().hex[:12]}"
    names = [f"esb.{kind}.{name}" for kind in ("dlq", "deliver", "rejected", "ingress")]
    admin = AdminClient({"bootstrap.servers": kafka})
    for future in admin.create_topics([NewTopic(t, 2, 1) for t in names]).values():
        future.result(timeout=15)
    yield name
    for future in admin.delete_topics(names, operation_timeout=10).values():
        future.result(timeout=15)


async def _write(kafka: str, topic: str, records: list[tuple[bytes, list[Any]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        for value, headers in records:
            await producer.send_and_wait(topic, value, key=b"k", headers=headers)
    finally:
        await producer.stop()


async def _read(kafka: str, topic: str, count: int) -> list[Any]:
    """The first ``count`` records of ``topic`` (at most 30 s)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[Any] = []
    try:
        await assign_whole_topic(consumer, topic)
        async with asyncio.timeout(30):
            while len(found) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    found.extend(batch)
        return found
    finally:
        await consumer.stop()


def _govesb(kafka: str, *args: str) -> str:
    result = CliRunner().invoke(app, ["--bootstrap", kafka, *args])
    assert result.exit_code == 0, result.output
    return result.output


async def test_dead_letters_are_listed_and_replayed_with_their_ids_minus_the_sink_headers(
    kafka: str, institution: str
) -> None:
    def letter(event_id: str, status: bytes) -> tuple[bytes, list[Any]]:
        headers = [("ce_id", event_id.encode()), ("ce_signature", b"c2ln"), ("esb_status", status),
                   ("esb_error", b"refused"), ("esb_attempts", b"1")]  # fmt: skip
        return f"body of {event_id}".encode(), headers

    await _write(kafka, f"esb.dlq.{institution}", [letter("a", b"422"), letter("b", b"500")])
    listed = await asyncio.to_thread(_govesb, kafka, "dlq", "list", "--subscriber", institution)
    assert f"2 dead letter(s) for {institution}" in listed
    replayed = await asyncio.to_thread(
        _govesb, kafka, "dlq", "replay", "--subscriber", institution, "--ids", "b"
    )
    assert f"replayed 1 dead letter(s) to esb.deliver.{institution}" in replayed
    [again] = await _read(kafka, f"esb.deliver.{institution}", 1)
    assert again.value == b"body of b"
    assert again.key == b"k"
    names = [name for name, _ in again.headers]
    assert names == ["ce_id", "ce_signature", "esb_replayed_from"]
    assert dict(again.headers)["ce_id"] == b"b"


async def test_rejections_are_filtered_by_reason_and_agreement_and_replayed_to_ingress(
    kafka: str, institution: str
) -> None:
    def rejection(event_id: str, reason: str, agreement: str = "") -> tuple[bytes, list[Any]]:
        headers = [("ce_id", event_id.encode()), ("esb_reason", reason.encode()),
                   ("esb_detail", b"why"), ("esb_source", b"esb.ingress.x[0]@1")]  # fmt: skip
        if agreement:
            headers += [("esb_subscription", agreement.encode()),
                        ("esb_replay_for", agreement.encode()),
                        ("esb_replay_keyid", b"ega-1"), ("esb_replay_sig", b"c2ln")]  # fmt: skip
        return event_id.encode(), headers

    await _write(
        kafka,
        f"esb.rejected.{institution}",
        [
            rejection("a", "bad-signature"),
            rejection("b", "internal", "first-deaths"),
            rejection("c", "internal", "second-deaths"),
        ],
    )
    every = await asyncio.to_thread(_govesb, kafka, "rejected", "list", "--publisher", institution)
    assert f"3 rejected event(s) of {institution}" in every
    internal = await asyncio.to_thread(
        _govesb, kafka, "rejected", "list", "--publisher", institution, "--reason", "internal"
    )
    assert f"2 rejected event(s) of {institution}" in internal
    replayed = await asyncio.to_thread(
        _govesb, kafka, "rejected", "replay", "--publisher", institution,
        "--reason", "internal", "--subscription", "second-deaths",
    )  # fmt: skip
    assert f"replayed 1 rejected event(s) to esb.ingress.{institution}" in replayed
    [again] = await _read(kafka, f"esb.ingress.{institution}", 1)
    assert again.value == b"c"
    assert [name for name, _ in again.headers] == [
        "ce_id",
        "esb_replay_for",
        "esb_replay_keyid",
        "esb_replay_sig",
        "esb_replayed_from",
    ]
    assert dict(again.headers)["esb_replay_for"] == b"second-deaths"


def test_a_missing_topic_or_a_bad_time_exits_2(kafka: str) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        app, ["--bootstrap", kafka, "rejected", "list", "--publisher", f"t{uuid.uuid4().hex}"]
    )
    assert missing.exit_code == 2
    assert "does not exist" in missing.output
    bad_time = runner.invoke(
        app, ["--bootstrap", kafka, "rejected", "list", "--publisher", "x", "--since", "monday"]
    )
    assert bad_time.exit_code == 2
    assert "is not an RFC 3339 time" in bad_time.output
