"""Reading whole topics without a consumer group (registry view, tail, audit, trace, replays)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.client import fetch_guard


async def assign_whole_topic(
    consumer: AIOKafkaConsumer, topic: str, *, from_beginning: bool = True
) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a started group-less consumer and seek.

    Raises:
        LookupError: the topic does not exist.
    """
    return await assign_topics(consumer, [topic], from_beginning=from_beginning)


async def assign_topics(
    consumer: AIOKafkaConsumer, topics: list[str], *, from_beginning: bool = True
) -> list[TopicPartition]:
    """Assign every partition of every topic in ``topics`` and seek; see assign_whole_topic.

    Installs the fetch guard first: a record whose header names are not UTF-8 is handed over
    (marked) instead of stopping the reader.
    """
    fetch_guard.install()
    assigned: list[TopicPartition] = []
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            # A group-less consumer's metadata covers only the topics its client tracks: add
            # this one (which refreshes the metadata) and look again.
            await consumer._client.add_topic(topic)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LookupError(f"topic {topic} does not exist")
        assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    if from_beginning:
        await consumer.seek_to_beginning(*assigned)
    else:
        await consumer.seek_to_end(*assigned)
    return assigned
