"""The sink's consumer loop: a partition whose records are being delivered is paused, and the
loop keeps polling.

A flush may wait a long time (an endpoint down, its breaker open, a record being retried).
Were the loop to wait with it, the consumer would stop polling and, after
``max_poll_interval_ms``, leave its group: a rebalance, and every record in flight delivered
again by the next owner. Instead each partition's records are flushed in a task of their own;
the partition is paused meanwhile (aiokafka keeps its position at the first record not yet
handed over and drops what it had prefetched, so nothing is skipped on resume), and the loop
goes on polling the others (and, with all paused, still counts as polling). When a
partition's flush is done (every record delivered or dead-lettered, and acknowledged), it is
resumed, and its offset goes with the next commit. Records of one key live in one partition,
so they stay in order.

Commits go at most every ``commit_interval_s`` (and at once before a stop or a rebalance), as
in the provider connector's loop: a commit per flush held the whole loop (every partition's
next poll) for a broker round trip each time one partition finished, and cost the sink and
the broker a request each (4% of the sink's busy samples at 700 events/s). A record
delivered after the last commit is delivered again after a crash, with the same
``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from connectors.http_sink.sink import HttpSink
from streams.client.fetch_pacing import FetchPacer

log = logging.getLogger(__name__)
Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


@dataclass
class _InFlight:
    task: asyncio.Task[None]
    next_offset: int  # what to commit once the task is done


@dataclass
class PartitionFlow(ConsumerRebalanceListener):  # type: ignore[misc]
    """Poll, hand each partition's records to the sink, commit what is done.

    ``every_poll`` runs after each poll (even when every partition waits), ``after_commit``
    after each commit; ``commit_interval_s`` is the longest a done flush waits for its commit
    (0: committed at once). ``wait_s`` bounds how long a stop or a rebalance waits for a
    partition's deliveries in flight; what is not done by then is not committed and is
    delivered again by whoever consumes the partition next (the ``Idempotency-Key`` is the
    event id).
    """

    consumer: AIOKafkaConsumer
    sink: HttpSink
    max_records: int = 500
    poll_ms: int = 500
    wait_s: float = 10.0
    every_poll: Callable[[], None] | None = None
    after_commit: Callable[[], Awaitable[None]] | None = None
    commit_interval_s: float = 0.5
    _in_flight: dict[TopicPartition, _InFlight] = field(default_factory=dict)
    _pending: dict[TopicPartition, int] = field(default_factory=dict)  # done, not committed
    _committed_at: float = 0.0

    @property
    def waiting(self) -> set[TopicPartition]:
        """Partitions paused while their records are being delivered."""
        return set(self._in_flight)

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping`` is set; then wait (bounded) for the deliveries in flight."""
        stop = asyncio.ensure_future(stopping.wait())
        poll: asyncio.Future[Batches] | None = None
        pacer = FetchPacer(self.consumer)  # fuller fetches under load (fetch_pacing)
        try:
            while not stopping.is_set():
                if poll is None:
                    poll = asyncio.ensure_future(
                        self.consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
                    )
                tasks = {flight.task for flight in self._in_flight.values()}
                commit_at = self._committed_at + self.commit_interval_s
                await asyncio.wait(
                    {poll, stop, *tasks},
                    timeout=max(0.0, commit_at - time.monotonic()) if self._pending else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                self._finish([p for p, f in self._in_flight.items() if f.task.done()])
                if self._pending and time.monotonic() >= commit_at:
                    await self._commit()
                if poll.done():
                    batches, poll = poll.result(), None
                    pacer.observe(sum(map(len, batches.values())))
                    if self.every_poll is not None:
                        self.every_poll()
                    self._start(batches)
        finally:
            stop.cancel()
            if poll is not None:
                poll.cancel()  # getmany hands records over only when it returns
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await poll
            await self._settle(set(self._in_flight))

    def _start(self, batches: Batches) -> None:
        for partition, records in batches.items():
            if not records:
                continue
            if partition in self._in_flight:
                # Fetched before the pause took effect: read them again once it is resumed.
                self.consumer.seek(partition, records[0].offset)
                continue
            for record in records:
                self.sink.add(record)
            self.consumer.pause(partition)
            task = asyncio.ensure_future(self.sink.flush(partition))
            self._in_flight[partition] = _InFlight(task, records[-1].offset + 1)

    def _finish(self, partitions: Iterable[TopicPartition]) -> None:
        """Resume ``partitions``, whose flushes are done; their offsets go with the next commit.

        A flush that failed (the producer could not write a dead letter or a receipt) raises
        here: the process stops with nothing of that partition committed past it.
        """
        done = {p: self._in_flight.pop(p) for p in list(partitions) if p in self._in_flight}
        if not done:
            return
        for flight in done.values():
            flight.task.result()
        for partition, flight in done.items():
            self._pending[partition] = flight.next_offset
        assigned = self.consumer.assignment()
        self.consumer.resume(*(p for p in done if p in assigned))

    async def _commit(self) -> None:
        """Commit the offsets of every flush done since the last commit."""
        offsets, self._pending = self._pending, {}
        self._committed_at = time.monotonic()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            # The partitions went to another member: it delivers them again from the last
            # commit (at least once; the endpoint de-duplicates on the Idempotency-Key).
            log.warning("could not commit %s: %s", sorted(offsets), type(error).__name__)
            return
        if self.after_commit is not None:
            await self.after_commit()

    async def _settle(self, partitions: set[TopicPartition]) -> None:
        """Wait up to ``wait_s`` for the flushes of ``partitions``; commit those done, cancel
        the others (their records are delivered again by the partition's next consumer)."""
        flights = {p: self._in_flight[p] for p in partitions if p in self._in_flight}
        if flights:
            await self._wait_or_cancel(flights)
        await self._commit()

    async def _wait_or_cancel(self, flights: dict[TopicPartition, _InFlight]) -> None:
        await asyncio.wait({f.task for f in flights.values()}, timeout=self.wait_s)
        unfinished = [p for p, f in flights.items() if not f.task.done()]
        for partition in unfinished:
            flight = self._in_flight.pop(partition, None)
            if flight is None:  # done meanwhile, and committed by the loop
                continue
            flight.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flight.task
        if unfinished:
            log.warning(
                "%d partition(s) left uncommitted: deliveries still waiting", len(unfinished)
            )
        self._finish(p for p in flights if p not in unfinished)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before a rebalance: finish (bounded) what is in flight on the partitions leaving."""
        await self._settle(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Nothing to do: a partition assigned again starts from its committed offset."""
