"""Records the bus set aside, and sending them again: ``govesb dlq`` and ``govesb rejected``.

One reader (a whole topic, group-less, up to its end offsets when the read started, with
filters) and one re-producer (``acks=all``, idempotent; same key, value and event id; the
headers the caller keeps plus where the record came from) serve both the HTTP sink's dead
letters (``esb.dlq.<subscriber>`` back to ``esb.deliver.<subscriber>``) and the pipeline's
rejections (``esb.rejected.<publisher>`` back to ``esb.ingress.<publisher>``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.client.consuming import assign_whole_topic
from streams.settings import KafkaSettings

Header = tuple[str, bytes]


@dataclass(frozen=True)
class BusRecord:
    """One record read from a bus topic."""

    partition: int
    offset: int
    timestamp: dt.datetime
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]

    def header(self, name: str) -> str:
        """A header as text ('' when absent; the last one when repeated)."""
        return (dict(self.headers).get(name) or b"").decode("utf-8", "replace")

    @property
    def event_id(self) -> str:
        """The event's ``ce_id``."""
        return self.header("ce_id")


@dataclass(frozen=True)
class RecordFilter:
    """Which records to take: all the given conditions hold (None: no condition)."""

    since: dt.datetime | None = None
    ids: frozenset[str] | None = None
    headers: dict[str, frozenset[str]] = field(default_factory=dict)
    """Header name to the values accepted (e.g. ``esb_reason`` to ``{"internal"}``)."""

    def __call__(self, record: BusRecord) -> bool:
        """Whether ``record`` is wanted."""
        if self.since and record.timestamp < self.since:
            return False
        if self.ids and record.event_id not in self.ids:
            return False
        return all(record.header(name) in values for name, values in self.headers.items())


async def read_records(
    kafka: KafkaSettings, topic: str, wanted: Callable[[BusRecord], bool] = RecordFilter()
) -> list[BusRecord]:
    """The records of ``topic`` that ``wanted`` accepts, oldest first per partition.

    Raises:
        LookupError: the topic does not exist.
    """
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[BusRecord] = []
    try:
        assigned = await assign_whole_topic(consumer, topic)
        end = await consumer.end_offsets(assigned)
        for partition in assigned:
            while await consumer.position(partition) < end[partition]:
                batch = await consumer.getmany(partition, timeout_ms=1000)
                for record in (r for rs in batch.values() for r in rs):
                    if record.offset >= end[partition]:
                        break  # written after the read started: not part of this answer
                    read = BusRecord(
                        record.partition,
                        record.offset,
                        dt.datetime.fromtimestamp(record.timestamp / 1000, dt.UTC),
                        record.key,
                        record.value,
                        tuple(record.headers),
                    )
                    if wanted(read):
                        found.append(read)
    finally:
        await consumer.stop()
    return found


def resent_headers(record: BusRecord, drop: Callable[[str], bool], origin: str) -> list[Header]:
    """``record``'s headers without those ``drop`` names, plus ``esb_replayed_from``.

    ``origin`` names the topic it is resent from (``dlq``, ``rejected``); the header reads
    e.g. ``rejected[0]@42``.
    """
    headers = [(name, value) for name, value in record.headers if not drop(name)]
    headers.append(("esb_replayed_from", f"{origin}[{record.partition}]@{record.offset}".encode()))
    return headers


async def resend(
    kafka: KafkaSettings,
    topic: str,
    records: Iterable[BusRecord],
    headers_of: Callable[[BusRecord], list[Header]],
    also: Callable[[BusRecord], tuple[str, bytes, bytes]] | None = None,
) -> int:
    """Produce ``records`` to ``topic`` (acks=all, idempotent), same key and value, with the
    headers ``headers_of`` gives each; return how many once the broker acknowledged all.

    ``also`` gives, per record, one more record to produce with it: (topic, key, value), e.g.
    the audit record of the replay.
    """
    producer = AIOKafkaProducer(**kafka.durable_producer_options())
    await producer.start()
    count = 0
    try:
        acks = []
        for record in records:
            headers = headers_of(record)
            acks.append(await producer.send(topic, record.value, key=record.key, headers=headers))
            if also is not None:
                extra_topic, key, value = also(record)
                acks.append(await producer.send(extra_topic, value, key=key))
            count += 1
        await asyncio.gather(*acks)  # raises if the broker refused one
    finally:
        await producer.stop()
    return count


def replay_audit(
    chain_name: str,
    from_topic: str,
    subscribers_of: Callable[[BusRecord], list[str]],
    by: str | None = None,
) -> Callable[[BusRecord], tuple[str, bytes, bytes]]:
    """The audit record of each replay (``outcome: replayed``, from which set-aside record,
    and ``by`` whom when known), for :func:`resend`'s ``also``: an event's trace shows that an
    operator sent it again."""
    from streams.audit.chain import new_chain
    from streams.contract import topics

    chain = new_chain(chain_name)

    def audited(record: BusRecord) -> tuple[str, bytes, bytes]:
        source = record.header("ce_source").split("/")
        key, value = chain.append(
            outcome="replayed",
            event_id=record.event_id,
            publisher=source[2] if len(source) > 2 else "",
            event_type=record.header("ce_type") or None,
            payload_sha256=None,
            subscribers=subscribers_of(record),
            reason=f"from {from_topic}[{record.partition}]@{record.offset}"
            + (f" by {by}" if by else ""),
        )
        return topics.AUDIT, key, value

    return audited
