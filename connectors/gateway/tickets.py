"""The reply tickets of requests that take late answers (``/engine/esb/async``).

The pipeline writes the ticket headers of every request routed to a service with
``late_answers_s > 0`` to the compacted ``esb.tickets``, keyed by the request id. Each gateway
replica reads all of it, from the start, into a bounded map whose entries leave when their
ticket's ``until_ms`` passes; a provider's late answer to a request id finds its ticket here
and is published with the ticket's headers unchanged, as a Kafka-native provider would.

The headers are kept as they were written and checked (signed by the bus) when used, with
the keys the registry holds then. A record carries them as its own headers; a record whose
value is a JSON object of them (header name -> text) is read as well. An empty record is a
tombstone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from cachetools import TLRUCache

from streams.client.consuming import assign_whole_topic
from streams.contract import topics
from streams.contract.requests import TICKET_HEADER, TICKET_HEADERS, header
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)

TicketHeaders = tuple[tuple[str, bytes], ...]


def ticket_headers(
    headers: Sequence[tuple[str, bytes | None]], value: bytes | None
) -> TicketHeaders:
    """The three ticket headers a record of ``esb.tickets`` holds, or () if it holds none."""
    found = tuple((name, raw) for name in TICKET_HEADERS if (raw := header(headers, name)))
    if len(found) == len(TICKET_HEADERS):
        return found
    if not value:
        return ()
    try:
        document = json.loads(value)
    except ValueError:
        return ()
    if not isinstance(document, dict) or not all(
        isinstance(document.get(name), str) for name in TICKET_HEADERS
    ):
        return ()
    return tuple((name, str(document[name]).encode()) for name in TICKET_HEADERS)


def until_s(ticket: TicketHeaders) -> float:
    """When answers under ``ticket`` stop being taken (epoch seconds; 0 if unreadable)."""
    try:
        fields = json.loads(header(ticket, TICKET_HEADER) or b"")
        return float(fields["until_ms"]) / 1000
    except (ValueError, TypeError, KeyError):
        return 0.0


class TicketBook:
    """The tickets of ``esb.tickets`` by request id, forgotten once past ``until_ms``."""

    def __init__(self, kafka: KafkaSettings, *, max_entries: int = 1_000_000) -> None:
        self._kafka = kafka
        self._tickets: TLRUCache[str, TicketHeaders] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, value, _now: until_s(value), timer=time.time
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.loaded = False

    def apply(
        self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
    ) -> None:
        """Take one record of ``esb.tickets``."""
        if not key:
            return
        request_id = key.decode(errors="replace")
        found = ticket_headers(headers, value)
        if not found:
            self._tickets.pop(request_id, None)
        elif until_s(found) > time.time():
            self._tickets[request_id] = found

    def get(self, request_id: str) -> TicketHeaders | None:
        """The ticket headers of ``request_id``, if answers are still taken."""
        return self._tickets.get(request_id)

    def __len__(self) -> int:
        self._tickets.expire()
        return len(self._tickets)

    @property
    def running(self) -> bool:
        """Whether the book is loaded and following the topic."""
        return self.loaded and self._task is not None and not self._task.done()

    async def start(self, load_timeout_s: float = 60.0) -> None:
        """Read ``esb.tickets`` up to its current end, then keep following it."""
        consumer = AIOKafkaConsumer(
            **self._kafka.aiokafka_options(), enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        self._consumer = consumer
        try:
            assigned = await assign_whole_topic(consumer, topics.TICKETS)
            end = await consumer.end_offsets(assigned)
            async with asyncio.timeout(load_timeout_s):
                for partition, offset in end.items():
                    while await consumer.position(partition) < offset:
                        await self._poll(consumer)
        except BaseException:
            await self.stop()
            raise
        self.loaded = True
        self._task = asyncio.create_task(self._follow(consumer), name="govesb-gateway-tickets")

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for record in records:
                self.apply(record.key, record.value, list(record.headers))

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self._poll(consumer)
            except KafkaError as error:  # the broker away: the consumer reconnects
                log.warning("reading %s: %s; retrying in 1 s", topics.TICKETS, error)
                await asyncio.sleep(1)

    def health(self) -> dict[str, Any]:
        """``/health``'s ``tickets`` check."""
        return {"ok": self.running, "tickets": len(self)}

    async def stop(self) -> None:
        """Stop following and close the consumer."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
