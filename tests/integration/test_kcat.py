"""An independent client (Debian's kcat, librdkafka's CLI) interoperates with the broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer

pytestmark = pytest.mark.kafka


async def test_records_produced_by_kcat_are_consumed_with_key_and_headers(
    kafka: str, kcat: str, topic_factory, group_id: str
) -> None:
    topic = topic_factory()
    lines = "".join(f"NIN-{n}|registered {n}\n" for n in range(5))
    kcat_producer = await asyncio.create_subprocess_exec(
        kcat, "-b", kafka, "-P", "-t", topic, "-K", "|", "-H", "ce_source=/institutions/nida",
        "-X", "acks=all", "-X", "enable.idempotence=true",
        stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.wait_for(kcat_producer.communicate(lines.encode()), 30)
    assert kcat_producer.returncode == 0

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka, group_id=group_id, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records = []
        while len(records) < 5:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "kcat's records did not arrive within 10 s"
            records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    assert [(r.key, r.value) for r in records] == [
        (f"NIN-{n}".encode(), f"registered {n}".encode()) for n in range(5)
    ]
    assert all(dict(r.headers) == {"ce_source": b"/institutions/nida"} for r in records)
