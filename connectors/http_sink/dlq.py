"""``govesb dlq list|replay``: what the HTTP sink could not deliver, and sending it again.

Replay copies dead letters back to ``esb.deliver.<subscriber>`` with their original headers
(so the same ``ce_id``, signature and agreement) minus the sink's ``esb_*`` error headers;
the sink then delivers them like any other record. Each replay is also an audit record
(``outcome: replayed``, from which dead letter), so an event's trace shows it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.audit.chain import new_chain
from streams.client.consuming import assign_whole_topic
from streams.contract import topics
from streams.settings import KafkaSettings

SINK_HEADERS = frozenset({"esb_error", "esb_status", "esb_attempts", "esb_source"})


@dataclass(frozen=True)
class DeadLetter:
    """One record of ``esb.dlq.<subscriber>``."""

    partition: int
    offset: int
    timestamp: dt.datetime
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str:
        """A header as text ('' when absent)."""
        return dict(self.headers).get(name, b"").decode("utf-8", "replace")

    @property
    def event_id(self) -> str:
        """The event's ``ce_id``."""
        return self.header("ce_id")


async def read_dead_letters(
    kafka: KafkaSettings,
    subscriber: str,
    since: dt.datetime | None = None,
    ids: set[str] | None = None,
) -> list[DeadLetter]:
    """Dead letters of ``subscriber``, oldest first per partition, optionally filtered."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[DeadLetter] = []
    try:
        assigned = await assign_whole_topic(consumer, topics.dlq(subscriber))
        end = await consumer.end_offsets(assigned)
        for partition in assigned:
            while await consumer.position(partition) < end[partition]:
                batch = await consumer.getmany(partition, timeout_ms=1000)
                for record in (r for rs in batch.values() for r in rs):
                    letter = DeadLetter(
                        record.partition,
                        record.offset,
                        dt.datetime.fromtimestamp(record.timestamp / 1000, dt.UTC),
                        record.key,
                        record.value,
                        tuple(record.headers),
                    )
                    if since and letter.timestamp < since:
                        continue
                    if ids and letter.event_id not in ids:
                        continue
                    found.append(letter)
    finally:
        await consumer.stop()
    return found


async def replay(kafka: KafkaSettings, subscriber: str, letters: list[DeadLetter]) -> int:
    """Send ``letters`` back to the deliver topic (acks=all); return how many."""
    producer = AIOKafkaProducer(**kafka.durable_producer_options())
    await producer.start()
    chain = new_chain("dlq-replay")
    try:
        for letter in letters:
            headers = [(k, v) for k, v in letter.headers if k not in SINK_HEADERS]
            headers.append(
                ("esb_replayed_from", f"dlq[{letter.partition}]@{letter.offset}".encode())
            )
            await producer.send(
                topics.deliver(subscriber), letter.value, key=letter.key, headers=headers
            )
            source = letter.header("ce_source").split("/")
            key, value = chain.append(
                outcome="replayed",
                event_id=letter.event_id,
                publisher=source[2] if len(source) > 2 else "",
                event_type=letter.header("ce_type") or None,
                payload_sha256=None,
                subscribers=[subscriber],
                reason=f"from {topics.dlq(subscriber)}[{letter.partition}]@{letter.offset}",
            )
            await producer.send(topics.AUDIT, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return len(letters)
