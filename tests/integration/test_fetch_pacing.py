"""``FetchPacer`` against the real broker: aiokafka's fetcher still reads the two settings it
changes (they are private to aiokafka), a busy consumer reads everything in fewer, fuller
fetches, and a consumer back to quiet has its own settings again."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.client.fetch_pacing import BUSY_MIN_BYTES, BUSY_WAIT_MS, FetchPacer

pytestmark = pytest.mark.kafka

RECORDS = 3000


async def test_a_paced_consumer_reads_every_record_in_fuller_fetches(
    kafka: str, topic_factory, group_id: str
) -> None:
    topic = topic_factory(partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka, group_id=group_id, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )  # fmt: skip
    await producer.start()
    await consumer.start()
    pacer = FetchPacer(consumer, busy_records_per_s=400)
    seen: set[bytes] = set()
    polls_with_records = 0
    busy_seen = False

    async def produce_steadily() -> None:
        for n in range(RECORDS):  # one at a time, some 700-900 records/s
            await producer.send(topic, str(n).encode(), key=str(n % 7).encode())
            await asyncio.sleep(0.001)
        await producer.flush()

    try:
        sending = asyncio.create_task(produce_steadily())
        async with asyncio.timeout(60):
            while len(seen) < RECORDS:
                batches = await consumer.getmany(timeout_ms=1000)
                count = sum(map(len, batches.values()))
                pacer.observe(count)
                polls_with_records += count > 0
                busy_seen |= pacer.busy
                if pacer.busy:
                    fetcher = consumer._fetcher
                    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (
                        BUSY_MIN_BYTES, BUSY_WAIT_MS,
                    )  # fmt: skip
                seen |= {r.value for records in batches.values() for r in records if r.value}
        await sending
        assert busy_seen, "some 800 records/s never counted as busy"
        # quiet again: polls that wait their whole timeout (5 ms fetches come back empty);
        # the first may still close a window that held the last records
        for _ in range(2):
            assert await consumer.getmany(timeout_ms=300) == {}
            pacer.observe(0)
        assert not pacer.busy
        assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (
            1, 500,
        )  # fmt: skip
        # and quiet means at once: a lone record comes back within one poll
        await (await producer.send(topic, b"lone", key=b"x"))
        async with asyncio.timeout(10):
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                if any(r.value == b"lone" for rs in batches.values() for r in rs):
                    break
    finally:
        await consumer.stop()
        await producer.stop()
    assert seen == {str(n).encode() for n in range(RECORDS)}
    # several records per fetch, not one or two each (unpaced: some 2,900 polls with records)
    assert polls_with_records < RECORDS / 2
