"""Reading an audit topic to the end, for ``govesb audit verify``."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from streams.audit.chain import ChainReport, verify
from streams.client.consuming import assign_whole_topic
from streams.settings import KafkaSettings


async def read_audit(kafka: KafkaSettings, topic: str) -> list[tuple[int, int, bytes | None]]:
    """Every record of ``topic`` as (partition, offset, value), in log order per partition."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: list[tuple[int, int, bytes | None]] = []
    try:
        assigned = await assign_whole_topic(consumer, topic)
        end = await consumer.end_offsets(assigned)
        for partition in assigned:
            while await consumer.position(partition) < end[partition]:
                batch = await consumer.getmany(partition, timeout_ms=1000)
                records.extend(
                    (r.partition, r.offset, r.value) for rs in batch.values() for r in rs
                )
    finally:
        await consumer.stop()
    return records


async def verify_topic(kafka: KafkaSettings, topic: str) -> dict[str, ChainReport]:
    """Verify every chain in ``topic``."""
    return verify(await read_audit(kafka, topic))
