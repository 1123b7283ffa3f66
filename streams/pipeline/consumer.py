"""The worker's Faust consumer: Faust's aiokafka consumer without its per-message task race.

What it changes in faust-streaming 0.15.3, and why:

- ``Consumer._drain_messages`` hands every fetched message to the conductor through
  ``wait_first(callback(message), suspend_flow.wait())``: four tasks created, waited and
  cancelled per message (65-100 µs here, more than a third of the worker's time). The race is
  the rebalance guard of faust-streaming #223/#236: a callback still waiting (on flow control,
  a full stream buffer) when a rebalance suspends the flow is cancelled, so a record fetched
  in the old generation is not queued after it. Here the callback is run eagerly: its first
  step runs inline and, when it finishes without waiting — the usual case, nothing to wait
  for — no task is made. Only a callback that has to wait, or a flow already suspended, goes
  through Faust's ``wait_first`` race, as before, so the guard holds wherever it can matter.
- ``_wait_next_records`` sleeps one second when no partition is active, which is the case
  whenever the stream buffer of every assigned partition is under pressure: the agent could
  empty its buffer and then wait up to a second for the fetcher. Here that sleep ends as soon
  as a buffer drains (``on_buffer_drop``).
- Faust runs its aiokafka consumer in a thread of its own, with its own event loop: every
  ``getmany``, commit and rebalance callback crosses between the two loops through method
  queues (a self-pipe write and a thread wake-up each way), and the two threads take turns at
  the GIL. Under a steady trickle of requests, the bus's main call, that thread had 30% of
  the worker's busy samples. :class:`LoopConsumerThread` runs the same consumer on the
  worker's own loop: the same Faust code, called directly (worker CPU per request 13% lower
  at 50 requests/s, 8% at 200/s). Heartbeats are then aiokafka's own task on that loop, as
  in any plain aiokafka consumer; one event's handling takes under a millisecond, far below
  the group's session timeout.
- Faust's consumer fetches with aiokafka's ``fetch_min_bytes=1``: under a steady load, a
  fetch request for every few records. :class:`LoopConsumerThread` paces its fetches
  (:mod:`streams.client.fetch_pacing`): fuller ones while the worker is busy, at once when
  it is quiet.
- :class:`QuietMonitor` is Faust's ``Monitor`` without its per-message and per-event sensors
  (counters, timestamps, dictionaries per event that nothing here reads: the bus's own metrics
  are ``streams.pipeline.metrics``).

:class:`App` wires the consumer in through Faust's transport; everything else is Faust's.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

import faust
from faust.sensors import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.client.fetch_pacing import FetchPacer

__all__ = ["App", "Consumer", "LoopConsumerThread", "QuietMonitor", "Transport", "run_eagerly"]


class _Resumed(Awaitable[Any]):
    """The rest of a coroutine whose first step already ran and yielded ``pending``."""

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        pending = self._pending
        while True:
            try:
                sent = yield pending
            except BaseException as error:  # a cancellation, thrown into the coroutine
                try:
                    pending = self._coro.throw(error)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = self._coro.send(sent)
                except StopIteration as done:
                    return done.value


def run_eagerly(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run the first step of ``coro`` now.

    Returns:
        ``(True, result)`` when it finished without waiting, else ``(False, rest)`` where
        ``rest`` is an awaitable that goes on from where it waits (it may be awaited, or made
        a task, once).
    """
    try:
        pending = coro.send(None)
    except StopIteration as done:
        return True, done.value
    return False, _Resumed(coro, pending)


class LoopConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer "thread", run on the worker's own event loop (module doc).

    Faust's consumer code is unchanged; what changes is how it is reached: ``call_thread``
    awaits the call instead of queueing it to another loop, and ``start``/``stop`` run the
    service here instead of in a thread.
    """

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._pacer: FetchPacer | None = None

    async def start(self) -> None:
        self._thread_started.set()
        await self._default_start()  # on_start: the aiokafka consumer is created and started

    async def getmany(self, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109
        records = await super().getmany(active_partitions, timeout)
        if self._pacer is None:
            self._pacer = FetchPacer(self._ensure_consumer())
        self._pacer.observe(sum(map(len, records.values())))
        return records

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = fun(*args, **kwargs)  # Faust passes coroutine functions and plain ones
        return await result if inspect.isawaitable(result) else result

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        await self.call_thread(fun, *args, **kwargs)

    def _stopped_set(self) -> None:
        self._stopped.set()

    def set_shutdown(self) -> None:
        self._shutdown.set()

    async def stop(self) -> None:
        if not self._started.is_set() or self._stopped.is_set():
            return
        self._stopped.set()
        try:
            await self.on_thread_stop()  # the aiokafka consumer leaves its group and stops
            await self._default_stop_children()
            await self._default_stop_futures()
            await self._default_stop_exit_stacks()
        finally:
            self._shutdown.set()  # stopped, even if stopping failed


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer on the worker's loop; the message hand-over and the idle wait
    changed (module doc)."""

    _buffer_drained: asyncio.Event | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return LoopConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def threadsafe_partitions_revoked(
        self, receiver_loop: asyncio.AbstractEventLoop, revoked: set[TP]
    ) -> None:
        await self.on_partitions_revoked(revoked)  # one loop: no queue to cross

    async def threadsafe_partitions_assigned(
        self, receiver_loop: asyncio.AbstractEventLoop, assigned: set[TP], generation_id: int = 0
    ) -> None:
        await self.on_partitions_assigned(assigned, generation_id)

    def on_buffer_drop(self, tp: TP) -> None:
        super().on_buffer_drop(tp)
        if self._buffer_drained is not None:
            self._buffer_drained.set()

    async def _wait_next_records(
        self,
        timeout: float,  # noqa: ASYNC109 - Faust's signature
    ) -> tuple[Any, set[TP] | None]:
        # faust-streaming 0.15.3's, with the idle second cut short when a buffer drains.
        if not self.flow_active:
            await self.wait(self.can_resume_flow.wait())
        try:
            self.not_waiting_next_records.set()
            client_only = self.app.client_only
            active_partitions = None if client_only else self._get_active_partitions()
            records: Any = {}
            if client_only or active_partitions:
                records = await self._getmany(active_partitions=active_partitions, timeout=timeout)
            else:
                await self._idle(1.0)
            return records, active_partitions
        finally:
            self.not_waiting_next_records.set()

    async def _idle(self, bound_s: float) -> None:
        """Wait until a stream buffer drains (or ``bound_s``, or the consumer stops)."""
        drained = self._buffer_drained = self._buffer_drained or asyncio.Event()
        await self.wait_first(drained.wait(), timeout=bound_s)
        drained.clear()

    async def _deliver(self, callback: Callable[[Any], Awaitable[Any]], message: Any) -> None:
        """Hand ``message`` to the conductor; Faust's rebalance race only where it can matter."""
        handing = callback(message)
        if not self.suspend_flow.is_set() and isinstance(handing, Coroutine):
            finished, rest = run_eagerly(handing)
            if finished:
                return
            handing = rest
        await self.wait_first(handing, self.suspend_flow.wait())

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        # faust-streaming 0.15.3's loop, with ``_deliver`` in place of the per-message
        # ``wait_first``; keep it in step with Faust's when Faust is upgraded.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        deliver = self._deliver
        yield_every = 100
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)
                # getmany may return at once again and again: let the loop run
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await deliver(callback, message)
                            set_read_offset(tp, offset)
                    unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer`."""

    Consumer = Consumer


class QuietMonitor(Monitor):
    """Faust's Monitor without the per-message and per-event sensors (module doc)."""

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: Any, event: Any
    ) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: Any, event: Any, state: dict[str, Any] | None = None
    ) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        return None

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        return None


class App(faust.App):
    """``faust.App`` whose consumer is :class:`Consumer` (the producer transport is Faust's)."""

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, cast(Any, self))
