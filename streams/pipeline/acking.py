"""Acks in order per partition, and the bound on work in flight (events and bytes).

An ingress event is acked — its offset may be committed — only after every output of it was
acknowledged by the broker or turned into a rejection that was. Acks keep the order of each
partition, and only of each partition: an output stuck on one partition holds back the acks
of that partition alone (:class:`Lanes`). :class:`InFlightBudget` bounds what the agent may
have processed and not yet acked, by count and by bytes, so memory stays within the
process's limit however large the records are.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class InFlightBudget:
    """At most ``max_events`` events and ``max_bytes`` bytes in flight.

    One event larger than ``max_bytes`` still passes when nothing else is in flight: a record
    the broker accepted must be processed, alone if need be.
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        self._changed = asyncio.Condition()
        self._waiting = 0  # acquire() calls waiting for room, in arrival order

    def _fits(self, size: int) -> bool:
        if self.events == 0:
            return True
        return self.events < self.max_events and self.bytes + size <= self.max_bytes

    async def acquire(self, size: int) -> None:
        """Wait until an event of ``size`` bytes fits, then count it."""
        if not self._waiting and self._fits(size):  # the usual case: no lock, no wait
            self.events += 1
            self.bytes += size
            return
        async with self._changed:
            self._waiting += 1
            try:
                await self._changed.wait_for(lambda: self._fits(size))
            finally:
                self._waiting -= 1
            self.events += 1
            self.bytes += size

    async def release(self, size: int) -> None:
        """An event of ``size`` bytes is no longer in flight."""
        self.events -= 1
        self.bytes -= size
        if self._waiting:
            async with self._changed:
                self._changed.notify_all()


@dataclass
class _Lane(Generic[T]):
    items: deque[tuple[float, T]] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Lanes(Generic[T]):
    """One task per partition with work in flight: ``settle`` then ``ack`` each item in order.

    ``on_death`` is called with the exception when a lane's task fails (a bug: ``settle`` and
    ``ack`` handle every expected error themselves); the lane stops, and its partition with it.
    """

    def __init__(
        self,
        settle: Callable[[T], Awaitable[None]],
        ack: Callable[[T], Awaitable[None]],
        on_death: Callable[[BaseException], None],
    ) -> None:
        self._settle = settle
        self._ack = ack
        self._on_death = on_death
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.dead: BaseException | None = None

    def put(self, partition: Hashable, item: T) -> None:
        """Queue ``item`` behind the others of ``partition``."""
        lane = self._lanes.setdefault(partition, _Lane())
        lane.items.append((time.monotonic(), item))
        self._idle.clear()
        if lane.task is None:
            lane.task = asyncio.create_task(self._run(partition, lane), name=f"acks {partition}")
            lane.task.add_done_callback(self._watch)

    async def _run(self, partition: Hashable, lane: _Lane[T]) -> None:
        while lane.items:
            _, item = lane.items[0]
            await self._settle(item)
            await self._ack(item)
            lane.items.popleft()
        lane.task = None
        del self._lanes[partition]
        if not self._lanes:
            self._idle.set()

    def _watch(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.dead = error
            self._on_death(error)

    def __len__(self) -> int:
        return sum(len(lane.items) for lane in self._lanes.values())

    def oldest_age_s(self, now: float | None = None) -> float:
        """Seconds since the oldest item still waiting was queued (0 when none waits)."""
        heads = [lane.items[0][0] for lane in self._lanes.values() if lane.items]
        return max(0.0, (now or time.monotonic()) - min(heads)) if heads else 0.0

    def oldest(self) -> T | None:
        """The item that has waited longest, if any."""
        heads = [lane.items[0] for lane in self._lanes.values() if lane.items]
        return min(heads, key=lambda head: head[0])[1] if heads else None

    async def join(self, bound_s: float) -> bool:
        """Wait (at most ``bound_s``) until nothing is in flight; whether that happened."""
        try:
            await asyncio.wait_for(self._idle.wait(), bound_s)
        except TimeoutError:
            return False
        return True

    async def cancel(self) -> None:
        """Stop every lane (shutdown); what they held is read again later (at-least-once)."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
