"""The sink's consumer loop: a partition whose records are being delivered is paused, and the
loop keeps polling.

A flush may wait a long time (an endpoint down, its breaker open, a record being retried).
Were the loop to wait with it, the consumer would stop polling and, after
``max_poll_interval_ms``, leave its group: a rebalance, and every record in flight delivered
again by the next owner. Instead each partition's records are flushed in a task of their own;
the partition is paused meanwhile (aiokafka keeps its position at the first record not yet
handed over and drops what it had prefetched, so nothing is skipped on resume), and the loop
goes on polling the others (and, with all paused, still counts as polling). When a
partition's flush is done (every record delivered or dead-lettered, and acknowledged), its
offset is committed and it is resumed. Records of one key live in one partition, so they
stay in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from connectors.http_sink.sink import HttpSink

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
    after each commit. ``wait_s`` bounds how long a stop or a rebalance waits for a
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
    _in_flight: dict[TopicPartition, _InFlight] = field(default_factory=dict)

    @property
    def waiting(self) -> set[TopicPartition]:
        """Partitions paused while their records are being delivered."""
        return set(self._in_flight)

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping`` is set; then wait (bounded) for the deliveries in flight."""
        stop = asyncio.ensure_future(stopping.wait())
        poll: asyncio.Future[Batches] | None = None
        try:
            while not stopping.is_set():
                if poll is None:
                    poll = asyncio.ensure_future(
                        self.consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
                    )
                tasks = {flight.task for flight in self._in_flight.values()}
                await asyncio.wait({poll, stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                await self._finish([p for p, f in self._in_flight.items() if f.task.done()])
                if poll.done():
                    batches, poll = poll.result(), None
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

    async def _finish(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit and resume ``partitions``, whose flushes are done.

        A flush that failed (the producer could not write a dead letter or a receipt) raises
        here: the process stops with nothing of that partition committed.
        """
        done = {p: self._in_flight.pop(p) for p in list(partitions) if p in self._in_flight}
        if not done:
            return
        for flight in done.values():
            flight.task.result()
        offsets = {partition: flight.next_offset for partition, flight in done.items()}
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            # The partitions went to another member: it delivers them again from the last
            # commit (at least once; the endpoint de-duplicates on the Idempotency-Key).
            log.warning("could not commit %s: %s", sorted(offsets), type(error).__name__)
            return
        assigned = self.consumer.assignment()
        self.consumer.resume(*(p for p in offsets if p in assigned))
        if self.after_commit is not None:
            await self.after_commit()

    async def _settle(self, partitions: set[TopicPartition]) -> None:
        """Wait up to ``wait_s`` for the flushes of ``partitions``; commit those done, cancel
        the others (their records are delivered again by the partition's next consumer)."""
        flights = {p: self._in_flight[p] for p in partitions if p in self._in_flight}
        if not flights:
            return
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
        await self._finish(p for p in flights if p not in unfinished)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before a rebalance: finish (bounded) what is in flight on the partitions leaving."""
        await self._settle(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Nothing to do: a partition assigned again starts from its committed offset."""
