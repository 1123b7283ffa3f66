"""Consumer groups that start where a topic ends, for tests and benchmarks on a used broker."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from streams.client.consuming import assign_topics
from streams.settings import KafkaSettings


async def start_group_at_ends(bootstrap: str, group: str, prefix: str) -> int:
    """Commit, for ``group``, the end offsets of every topic named ``prefix*``; return how
    many records that skips.

    What earlier runs on the same broker left unread (a benchmark's ingress, say) would
    otherwise be read first: a worker or sink of that group reaches what a test sends now
    minutes later, or a benchmark measures the backlog.
    """
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka_options(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        names = sorted(t for t in await consumer.topics() if t.startswith(prefix))
        if not names:
            return 0
        partitions = await assign_topics(consumer, names, from_beginning=False)
        ends = await consumer.end_offsets(partitions)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        await consumer.commit(dict(ends))
        return sum(end - (committed[tp] or 0) for tp, end in ends.items())
    finally:
        await consumer.stop()
