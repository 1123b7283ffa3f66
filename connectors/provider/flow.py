"""The provider connector's consumer loop: every request is answered in a task of its own,
and a partition's offset moves on only past requests whose answers are acknowledged.

Unlike the HTTP sink, requests of one key need no order (each is a question of its own), and
one slow provider call must not hold those fetched after it: the loop keeps fetching while
requests are in flight, up to ``concurrency`` of them (then it pauses every partition and
keeps polling, so the group does not drop it). Per partition the offsets in flight are kept in
order; the committed offset is the first one not yet answered, so a request in flight when the
process dies is read again by the partition's next consumer. Commits go at most every
``commit_interval_s`` (and at once before a stop or a rebalance): one commit per answer would
cost the connector and the broker a request each, and hold the loop's next poll meanwhile; a
request answered after the last commit is answered again after a crash, with the same answer
id, which the pipeline takes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streams.client.fetch_pacing import FetchPacer

log = logging.getLogger(__name__)
Answer = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[Any]]


@dataclass
class RequestFlow(ConsumerRebalanceListener):  # type: ignore[misc]
    """Poll, start one task per request, commit each partition's answered prefix.

    ``answer(record)`` returns once the record's answer is acknowledged (or it needs none).
    ``wait_s`` bounds how long a stop or a rebalance waits for requests in flight; those not
    done by then are not committed and are answered by whoever reads the partition next.
    """

    consumer: AIOKafkaConsumer
    answer: Answer
    concurrency: int = 64
    poll_ms: int = 200
    wait_s: float = 10.0
    commit_interval_s: float = 0.5
    _in_flight: dict[TopicPartition, OrderedDict[int, asyncio.Task[Any]]] = field(
        default_factory=dict
    )
    _answered: dict[TopicPartition, int] = field(default_factory=dict)  # offset to commit
    _paused: bool = False
    _committed_at: float = 0.0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def waiting(self) -> int:
        """Requests being answered."""
        return sum(len(tasks) for tasks in self._in_flight.values())

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping`` is set; then wait (bounded) for the requests in flight."""
        stop = asyncio.ensure_future(stopping.wait())
        poll: asyncio.Future[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]] | None
        poll = None
        pacer = FetchPacer(self.consumer)  # fuller fetches under load (fetch_pacing)
        try:
            while not stopping.is_set():
                if poll is None:
                    room = max(1, self.concurrency - self.waiting)
                    poll = asyncio.ensure_future(
                        self.consumer.getmany(timeout_ms=self.poll_ms, max_records=room)
                    )
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                commit_at = self._committed_at + self.commit_interval_s
                await asyncio.wait(
                    {poll, stop, wake},
                    timeout=max(0.0, commit_at - time.monotonic()) if self._answered else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                wake.cancel()
                if poll.done():
                    batches, poll = poll.result(), None
                    pacer.observe(sum(map(len, batches.values())))
                    for records in batches.values():
                        for record in records:
                            self._start(record)
                self._forget_answered()
                if self._answered and time.monotonic() >= commit_at:
                    await self._commit(list(self._answered))
                self._pace()
        finally:
            stop.cancel()
            if poll is not None:
                poll.cancel()  # getmany hands records over only when it returns
                with contextlib.suppress(asyncio.CancelledError, KafkaError):
                    await poll
            await self._settle(set(self._in_flight) | set(self._answered))

    def _start(self, record: ConsumerRecord[bytes, bytes]) -> None:
        partition = TopicPartition(record.topic, record.partition)
        tasks = self._in_flight.setdefault(partition, OrderedDict())
        if record.offset in tasks:  # fetched again after a seek: already in hand
            return
        task = asyncio.ensure_future(self.answer(record))
        task.add_done_callback(lambda _: self._wake.set())
        tasks[record.offset] = task

    def _pace(self) -> None:
        """Pause every partition while ``concurrency`` requests are in flight."""
        full = self.waiting >= self.concurrency
        if full and not self._paused:
            self.consumer.pause(*self.consumer.assignment())
        elif not full and self._paused:
            self.consumer.resume(*self.consumer.assignment())
        self._paused = full

    def _forget_answered(self) -> None:
        """Move each partition's answered prefix (no request before it unanswered) out of
        the requests in flight, to be committed.

        A task that failed (the producer could not write an answer) raises here: the process
        stops with that request uncommitted.
        """
        for partition in list(self._in_flight):
            tasks = self._in_flight[partition]
            done = None
            while tasks and next(iter(tasks.values())).done():
                offset, task = next(iter(tasks.items()))
                # A failed task stays first (nothing is committed past it, even by the bounded
                # wait at the stop) and raises: the process stops with it uncommitted.
                if not task.cancelled() and task.exception() is not None:
                    task.result()
                tasks.popitem(last=False)
                done = offset
            if not tasks:
                del self._in_flight[partition]
            if done is not None:
                self._answered[partition] = done + 1

    async def _commit(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit, per partition of ``partitions``, past the requests answered with none
        before them unanswered."""
        self._forget_answered()
        offsets = {p: self._answered.pop(p) for p in set(partitions) if p in self._answered}
        self._committed_at = time.monotonic()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            # The partitions went to another member: it answers them again from the last
            # commit (the same answer ids; the pipeline takes one answer per request).
            log.warning("could not commit %s: %s", sorted(offsets), type(error).__name__)

    async def _settle(self, partitions: set[TopicPartition]) -> None:
        """Wait up to ``wait_s`` for the requests of ``partitions``; commit the answered
        prefix, cancel the rest (answered by the partition's next consumer)."""
        tasks = [t for p in partitions for t in self._in_flight.get(p, {}).values()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.wait_s)
        await self._commit(partitions)
        left = 0
        for partition in partitions:
            for task in self._in_flight.pop(partition, {}).values():
                task.cancel()
                left += 1
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if left:
            log.warning("%d request(s) left uncommitted: still being answered", left)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before a rebalance: finish (bounded) the requests of the partitions leaving."""
        await self._settle(set(revoked))
        self._paused = False

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Nothing to do: a partition assigned again starts from its committed offset."""
