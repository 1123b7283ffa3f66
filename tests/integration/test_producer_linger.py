"""The worker's outputs are not held for the producer's linger once nothing more is waiting.

``streams.pipeline.writer.end_linger`` reaches into aiokafka's accumulator (it has no public
"send what you have"): this pins that it still does what it says against the real broker.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.pipeline.writer import end_linger

pytestmark = pytest.mark.kafka

LINGER_MS = 120_000  # far beyond the bound below: an ack within it was not held for the linger


async def test_end_linger_sends_the_waiting_batches_at_once_in_order(
    kafka: str, topic_factory
) -> None:
    topic = topic_factory(partitions=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka, acks="all", enable_idempotence=True, linger_ms=LINGER_MS
    )
    await producer.start()
    try:
        first = [await producer.send(topic, f"a{n}".encode(), key=b"k") for n in range(5)]
        end_linger(producer)
        # sent before the sender took the batch: they may join it; either way they go too
        second = [await producer.send(topic, f"b{n}".encode(), key=b"k") for n in range(5)]
        end_linger(producer)
        acks = await asyncio.wait_for(asyncio.gather(*first, *second), timeout=20)
    finally:
        await asyncio.wait_for(producer.stop(), timeout=30)
    assert [ack.offset for ack in acks] == sorted(ack.offset for ack in acks)

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        while len(values) < 10:
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, "the records were acknowledged but none could be read within 10 s"
            values += [r.value for records in batches.values() for r in records if r.value]
    finally:
        await consumer.stop()
    assert values == [f"a{n}".encode() for n in range(5)] + [f"b{n}".encode() for n in range(5)]


async def test_end_linger_with_nothing_waiting_changes_nothing(kafka: str, topic_factory) -> None:
    topic = topic_factory()
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        end_linger(producer)  # no batch: no error, and the producer goes on working
        ack = await asyncio.wait_for(await producer.send(topic, b"after"), timeout=20)
    finally:
        await producer.stop()
    assert ack.offset == 0
