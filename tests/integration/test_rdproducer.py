"""The worker's librdkafka producer against the real broker: acknowledged records in order,
on the partition aiokafka and Java clients choose for their key, refusals as aiokafka's
errors, and a stop that waits for what is queued."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import InvalidTopicError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from streams.pipeline.outputs import Failure, classify
from streams.pipeline.rdproducer import RdProducer

pytestmark = pytest.mark.kafka


async def _read(kafka: str, topic: str, count: int) -> list[tuple[int, bytes, bytes, list]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[tuple[int, bytes, bytes, list]] = []
    try:
        while len(found) < count:
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, f"{len(found)} of {count} acknowledged records readable in 10 s"
            found += [(r.partition, r.key, r.value, list(r.headers))
                      for records in batches.values() for r in records]  # fmt: skip
    finally:
        await consumer.stop()
    return found


async def test_records_are_acknowledged_in_order_on_the_partition_of_their_key(
    kafka: str, topic_factory
) -> None:
    topic = topic_factory(partitions=3)
    producer = RdProducer({"bootstrap.servers": kafka, "linger.ms": 2})
    await producer.start()
    try:
        keys = [f"key-{n % 7}".encode() for n in range(60)]
        futures = [
            await producer.send(topic, f"v{n}".encode(), key=key,
                                headers=[("ce_id", f"id-{n}".encode())])
            for n, key in enumerate(keys)
        ]  # fmt: skip
        await asyncio.wait_for(asyncio.gather(*futures), 20)
    finally:
        await producer.stop()

    records = await _read(kafka, topic, 60)
    partition_of = DefaultPartitioner()
    for partition, key, value, headers in records:
        assert partition == partition_of(key, [0, 1, 2], [0, 1, 2])
        assert headers == [("ce_id", b"id-" + value[1:])]
    for key in set(keys):  # per key, in the order sent
        sent = [f"v{n}".encode() for n, k in enumerate(keys) if k == key]
        assert [value for _, k, value, _ in records if k == key] == sent


async def test_refusals_come_as_aiokafka_errors(kafka: str, topic_factory) -> None:
    topic = topic_factory()
    producer = RdProducer({"bootstrap.servers": kafka, "message.max.bytes": 100_000})
    await producer.start()
    try:
        with pytest.raises(MessageSizeTooLargeError) as too_large:  # refused before queueing
            await producer.send(topic, b"x" * 200_000)
        assert classify(too_large.value) is Failure.REFUSED
        assert await producer.refusal(topic) is None
        invalid = await producer.refusal("not a topic name!")
        assert isinstance(invalid, InvalidTopicError)
        assert classify(invalid) is Failure.REFUSED
        fine = await producer.send(topic, b"small")
        await asyncio.wait_for(fine, 20)
    finally:
        await producer.stop()


async def test_stop_waits_until_what_is_queued_is_acknowledged(kafka: str, topic_factory) -> None:
    topic = topic_factory()
    producer = RdProducer({"bootstrap.servers": kafka, "linger.ms": 200})
    await producer.start()
    futures = [await producer.send(topic, f"v{n}".encode()) for n in range(500)]
    await asyncio.wait_for(producer.stop(), 30)
    assert all(future.done() and future.exception() is None for future in futures)
    assert len(await _read(kafka, topic, 500)) == 500
