"""``govesb dlq list|replay``: what the HTTP sink could not deliver, and sending it again.

Replay copies dead letters back to ``esb.deliver.<subscriber>`` with their original headers
(so the same ``ce_id``, signature and agreement) minus the sink's ``esb_*`` error headers;
the sink then delivers them like any other record. Reading and re-producing are the bus's
one piece of code for set-aside records (:mod:`streams.client.records`). Each replay
is also an audit record (``outcome: replayed``, from which dead letter), so an event's trace
shows it.
"""

from __future__ import annotations

import datetime as dt

from streams.client.records import (
    BusRecord,
    RecordFilter,
    read_records,
    replay_audit,
    resend,
    resent_headers,
)
from streams.contract import topics
from streams.settings import KafkaSettings

SINK_HEADERS = frozenset(
    {"esb_error", "esb_status", "esb_attempts", "esb_source", "esb_replayed_from"}
)  # resent_headers adds esb_replayed_from anew: one, naming the last dead letter

DeadLetter = BusRecord
"""One record of ``esb.dlq.<subscriber>``."""


async def read_dead_letters(
    kafka: KafkaSettings,
    subscriber: str,
    since: dt.datetime | None = None,
    ids: set[str] | None = None,
) -> list[DeadLetter]:
    """Dead letters of ``subscriber``, oldest first per partition, optionally filtered."""
    wanted = RecordFilter(since, frozenset(ids) if ids else None)
    return await read_records(kafka, topics.dlq(subscriber), wanted)


async def replay(
    kafka: KafkaSettings, subscriber: str, letters: list[DeadLetter], by: str | None = None
) -> int:
    """Send ``letters`` back to the deliver topic (acks=all); return how many.

    ``by`` names who asked (``operator:<name>`` from the portal); each replay's audit record
    says so after the dead letter it came from.
    """
    return await resend(
        kafka,
        topics.deliver(subscriber),
        letters,
        lambda letter: resent_headers(letter, SINK_HEADERS.__contains__, "dlq"),
        replay_audit("dlq-replay", topics.dlq(subscriber), lambda _: [subscriber], by=by),
    )
