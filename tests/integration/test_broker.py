"""The broker fixture is a real Kafka: both client libraries the bus uses work against it."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.kafka


async def test_aiokafka_idempotent_produce_then_consume_in_key_order(
    kafka: str, topic_factory, group_id: str
) -> None:
    topic = topic_factory(partitions=3)
    events = [(f"citizen-{n % 4}".encode(), f"event-{n}".encode()) for n in range(40)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        acks = [await producer.send_and_wait(topic, value, key=key) for key, value in events]
    finally:
        await producer.stop()
    assert all(ack.offset >= 0 for ack in acks)

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[tuple[bytes, bytes]] = []
    try:
        while len(received) < len(events):
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, "no records arrived within 10 s"
            for records in batches.values():
                received.extend((record.key, record.value) for record in records)
        await consumer.commit()
    finally:
        await consumer.stop()

    assert sorted(received) == sorted(events)
    for key in {key for key, _ in events}:
        assert [v for k, v in received if k == key] == [v for k, v in events if k == key]


def test_confluent_kafka_idempotent_produce_then_consume_with_headers(
    kafka: str, topic_factory, group_id: str
) -> None:
    topic = topic_factory()
    event_id = str(uuid.uuid4())
    producer = Producer({"bootstrap.servers": kafka, "acks": "all", "enable.idempotence": True})
    delivered: list[tuple[str | None, int]] = []

    def on_delivery(error, message) -> None:
        delivered.append((str(error) if error else None, message.offset()))

    producer.produce(
        topic,
        value=b"payload",
        key=b"TIN-100-200-300",
        headers=[("ce_id", event_id.encode())],
        on_delivery=on_delivery,
    )
    assert producer.flush(15) == 0
    assert delivered == [(None, 0)]

    consumer = Consumer(
        {
            "bootstrap.servers": kafka,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        message = consumer.poll(15)
        assert message is not None, "nothing consumed within 15 s"
        assert message.error() is None
        assert (message.key(), message.value()) == (b"TIN-100-200-300", b"payload")
        assert dict(message.headers())["ce_id"] == event_id.encode()
        consumer.commit(message, asynchronous=False)
    finally:
        consumer.close()
