"""The worker's producer, and what it does when the broker does not take an output.

:class:`OutputWriter` sends every output of the pipeline (acks=all, idempotent) and settles
each: it waits out what is transient (``streams.retrying``'s backoff), replaces what the
broker refused for good by what :func:`~streams.pipeline.outputs.instead` says (an
``undeliverable`` rejection, a cut copy), sends a record again on its own when only the batch
it shared was too large, and replaces the producer itself when the broker lost step with its
sequence numbers. What cannot be written at all raises :class:`Unwritable`: the worker then
holds the partition and fails loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError, UnknownTopicOrPartitionError
from cachetools import TTLCache

from streams.pipeline.metrics import PipelineMetrics
from streams.pipeline.outputs import (
    BATCH_SIZE_ERRORS,
    Failure,
    ReplayClaim,
    TransientSendError,
    absent_topic_error,
    classify,
    describe,
    fits_alone,
    instead,
    record_size,
    was_cut,
)
from streams.pipeline.process import Output
from streams.pipeline.rdproducer import MAX_REQUEST_BYTES, RdProducer
from streams.pipeline.validation import IngressRecord
from streams.retrying import until_available
from streams.settings import PRODUCE_BATCH_BYTES, WorkerSettings

log = logging.getLogger(__name__)
# A record whose batch the broker refused as too large, but that fits alone, goes again up to
# this many times before it counts as undeliverable (its new batch may hold others again).
RESEND_ALONE_TIMES = 3

OutputProducer: TypeAlias = AIOKafkaProducer | RdProducer
"""The client that writes the outputs (``output_client``): both raise aiokafka's errors."""


class Unwritable(Exception):
    """Nothing can be written in place of ``output``: the broker refused it and what would
    replace it, or the producer is unusable (``failure`` says which)."""

    def __init__(self, output: Output, error: KafkaError, failure: Failure) -> None:
        super().__init__(f"{output.topic}: {describe(error)}")
        self.output = output
        self.error = error
        self.failure = failure


def event_id(record: IngressRecord) -> str:
    """The record's ``ce_id`` header, for log lines (``(none)`` without one)."""
    found = next((v for k, v in record.headers if k == "ce_id"), b"")
    return found.decode(errors="replace") or "(none)"


class OutputWriter:
    """The producer of one worker and the settling of what it sends."""

    def __init__(self, settings: WorkerSettings, metrics: PipelineMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.producer: OutputProducer | None = None
        self._issued_by: weakref.WeakKeyDictionary[asyncio.Future[Any], OutputProducer] = (
            weakref.WeakKeyDictionary()
        )
        self._renewing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._topic_limits: TTLCache[str, int | None] = TTLCache(maxsize=1024, ttl=60)
        self.quiet = Quiet(settings.linger_ms / 1000)
        self.replay_claim: ReplayClaim | None = None
        """Signs the replay claim of an undeliverable delivery (set once the bus key is)."""

    async def start(self) -> None:
        """Connect the producer."""
        self.producer = await self._new_producer()

    async def stop(self) -> None:
        """Flush and close the producer (and one being replaced)."""
        if self.producer is not None:
            await self.producer.stop()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _new_producer(self) -> OutputProducer:
        producer: OutputProducer
        if self.settings.output_client == "librdkafka":
            producer = RdProducer.for_cluster(self.settings.kafka, **{
                "linger.ms": self.settings.linger_ms, "batch.size": PRODUCE_BATCH_BYTES,
            })  # fmt: skip
        else:
            producer = AIOKafkaProducer(
                **self.settings.kafka.durable_producer_options(
                    # Fewer, fuller produce requests while busy: the broker shares the
                    # machine's cores with the workers (make bench: one worker 1,099 -> 1,360
                    # events/s, two 1,231 -> 1,722 going from 2 to 8 ms); ended early by
                    # end_linger when quiet.
                    linger_ms=self.settings.linger_ms,
                    max_batch_size=PRODUCE_BATCH_BYTES,
                    max_request_size=MAX_REQUEST_BYTES,
                )
            )
        await producer.start()
        return producer

    async def _renew_producer(self, failed: OutputProducer | None, error: KafkaError) -> None:
        """A new producer in place of ``failed``, whose sequence numbers the broker no longer
        follows; the old one stops in the background (what it still holds settles or fails,
        and is sent again through the new one)."""
        async with self._renewing:
            if failed is None or self.producer is not failed:
                return  # renewed already, for another output
            old: OutputProducer = failed
            self.producer = await self._new_producer()
            log.warning("the broker lost step with the producer (%s): a new producer takes over",
                        describe(error))  # fmt: skip
            retiring = asyncio.get_running_loop().create_task(old.stop())
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)

    def handled(self, nothing_waiting: bool) -> None:
        """One ingress event's outputs are queued; ``nothing_waiting``: no other event is
        waiting to be handled. On a quiet bus the outputs then go at once (nothing more
        would join their batches); a busy worker keeps batching (:class:`Quiet`). (librdkafka's
        short linger needs none of this.)"""
        producer = self.producer
        if isinstance(producer, RdProducer) or producer is None:
            return
        if self.quiet.after_event(time.monotonic(), nothing_waiting):
            end_linger(producer)

    async def send(self, output: Output) -> asyncio.Future[Any]:
        """Queue ``output``; a transient error is waited out, any other comes back as the
        returned future's exception (so that every error is classified in one place)."""
        try:  # the way nearly every output goes: queued at the first attempt
            return await self._queue(output)
        except TransientSendError:
            return await until_available(lambda: self._queue(output), TransientSendError,
                                         f"broker for {output.topic}", log)  # fmt: skip

    async def _queue(self, output: Output) -> asyncio.Future[Any]:
        producer = self.producer  # the current one: it may be renewed between attempts
        assert producer is not None  # noqa: S101 - start() ran
        try:
            future: asyncio.Future[Any] = await producer.send(
                output.topic, output.value, key=output.key, headers=list(output.headers)
            )
            self._issued_by[future] = producer
            return future
        except KafkaError as error:
            refusal = error if classify(error) is not Failure.TRANSIENT else None
            if isinstance(error, UnknownTopicOrPartitionError):
                refusal = await self._refusal_by_metadata(output.topic)
            if refusal is None:
                self.metrics.output_errors.labels(type(error).__name__, "transient").inc()
                raise TransientSendError(error) from error
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(refusal)
            return failed

    async def _fits_alone(self, output: Output, error: KafkaError) -> bool:
        """Whether the broker's size refusal of ``output`` was for the batch it shared, not
        for itself: it fits the topic's ``max.message.bytes`` alone."""
        if not isinstance(error, BATCH_SIZE_ERRORS) or record_size(output) > MAX_REQUEST_BYTES:
            return False
        limit = await self._max_message_bytes(output.topic)
        return limit is not None and fits_alone(output, limit)

    async def _max_message_bytes(self, topic: str) -> int | None:
        """``max.message.bytes`` of ``topic`` (asked once a minute at most); None when the
        cluster does not tell (no DescribeConfigs right, unreachable)."""
        if topic in self._topic_limits:
            return self._topic_limits[topic]
        admin = AIOKafkaAdminClient(**self.settings.kafka.aiokafka_options())
        limit: int | None = None
        try:
            await admin.start()
            wanted = {"max.message.bytes": None}  # the keys filter what is described
            resource = ConfigResource(ConfigResourceType.TOPIC, topic, wanted)
            for response in await admin.describe_configs([resource]):
                for error_code, _message, _type, _name, entries, *_ in response.resources:
                    limit = next((int(e[1]) for e in entries if e[0] == "max.message.bytes"
                                  and not error_code), limit)  # fmt: skip
        except Exception as failure:  # a question the cluster may not answer: then unknown
            log.warning("cannot read max.message.bytes of %s (%s)", topic, describe(failure))
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        self._topic_limits[topic] = limit
        return limit

    async def _refusal_by_metadata(self, topic: str) -> KafkaError | None:
        """The error the cluster's fresh metadata gives ``topic`` (absent, not authorized), or
        None when the topic is there or the cluster cannot be asked."""
        producer = self.producer
        assert producer is not None  # noqa: S101 - start() ran
        if isinstance(producer, RdProducer):
            return await producer.refusal(topic)
        client = producer.client
        if not await client.force_metadata_update():
            return None
        if topic in client.cluster.unauthorized_topics:
            return TopicAuthorizationFailedError(topic)
        if client.cluster.partitions_for_topic(topic) is None:
            return absent_topic_error(topic)
        return None

    async def _acknowledgement(
        self, output: Output, future: asyncio.Future[Any]
    ) -> KafkaError | None:
        """None once the broker acknowledged ``output``, or the error it failed with.

        With idempotence aiokafka retries retriable errors for ever, so an output to a topic
        deleted meanwhile would wait for ever: every ``output_check_s`` the cluster is asked.
        """
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(future), self.settings.output_check_s)
                return None
            except KafkaError as error:
                return error
            except TimeoutError:
                refusal = await self._refusal_by_metadata(output.topic)
                if refusal is not None:
                    return refusal

    async def settle(
        self,
        record: IngressRecord,
        output: Output,
        first: asyncio.Future[Any],
        replaced: Callable[[Output, Output], None],
    ) -> None:
        """Wait until ``output`` (of ``record``, first sent as ``first``) is acknowledged, or
        what replaces it is: transient errors are waited out, a refused record is replaced
        (``replaced(refused, replacement)`` is told).

        Raises:
            Unwritable: nothing can be written in its place (or the producer is unusable).
        """
        current = [output]
        pending = [first]
        resent = 0

        async def attempt() -> KafkaError | None:
            future = pending.pop() if pending else await self.send(current[0])
            error = await self._acknowledgement(current[0], future)
            failure = classify(error) if error is not None else None
            if error is not None and failure is Failure.OUT_OF_SEQUENCE:
                await self._renew_producer(self._issued_by.get(future), error)
            if error is not None and failure in (Failure.TRANSIENT, Failure.OUT_OF_SEQUENCE):
                self.metrics.output_errors.labels(type(error).__name__, str(failure)).inc()
                self.metrics.send_retries.inc()
                raise TransientSendError(error)
            return error

        while True:
            error = await until_available(
                attempt, TransientSendError, f"acknowledgement of {output.topic}", log
            )
            if error is None:
                return
            refused = current[0]
            failure = classify(error)
            self.metrics.output_errors.labels(type(error).__name__, str(failure)).inc()
            if resent < RESEND_ALONE_TIMES and await self._fits_alone(refused, error):
                resent += 1  # it shared a batch the broker refused: it goes again
                log.warning("%s refused a batch (%s); sending its record of %s[%d]@%d again",
                            refused.topic, describe(error), *record.position)  # fmt: skip
                continue
            replacement = (
                instead(record, refused, error, MAX_REQUEST_BYTES, self.replay_claim)
                if failure is Failure.REFUSED
                else None
            )
            if replacement is None:
                raise Unwritable(refused, error, failure)
            replaced(refused, replacement)
            instead_of = "a cut copy" if was_cut(replacement) else "an undeliverable rejection"
            log.warning("%s refused a record of %s[%d]@%d (event %s): %s; sending %s instead",
                        refused.topic, *record.position, event_id(record), describe(error),
                        instead_of)  # fmt: skip
            current[0] = replacement


BUSY_EVENTS_PER_LINGER = 4
"""More events than this within one linger and the worker counts as busy: its outputs wait
out the linger, to go in fuller produce requests (at 8 ms: above 500 events/s)."""


class Quiet:
    """Whether the worker is quiet enough for its outputs to go without their linger.

    Quiet: no other event waiting, and at most :data:`BUSY_EVENTS_PER_LINGER` events handled
    within the current window of ``linger_s``. A worker handling a stream (a replay, a peak)
    finds its queue empty now and then between two fetches; counting the events keeps it
    batching then, where a produce request per event would cost CPU the stream needs.
    """

    def __init__(self, linger_s: float, busy_events: int = BUSY_EVENTS_PER_LINGER) -> None:
        self.linger_s = linger_s
        self.busy_events = busy_events
        self._window_began = -float("inf")
        self._events = 0

    def after_event(self, now: float, nothing_waiting: bool) -> bool:
        """Count one event handled at ``now`` (monotonic seconds); whether to send at once."""
        if now - self._window_began >= self.linger_s:
            self._window_began, self._events = now, 0
        self._events += 1
        return nothing_waiting and self._events <= self.busy_events


def end_linger(producer: AIOKafkaProducer) -> None:
    """Make every batch ``producer`` holds ready to go now, and wake its sender.

    aiokafka (0.14) sends a partition's batch once it is full or its ``linger_ms`` is over,
    and has no call for "send what you have": this ends the linger of the batches waiting
    (records sent meanwhile still join them until the sender takes them, so no ``send`` is
    held up) and wakes the sender the way a full batch does. Acks, idempotence and ordering
    are the producer's as before; only the time a batch waits changes.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is None:  # not aiokafka's producer (a test's): nothing lingers
        return
    waiting = False
    for batches in accumulator._batches.values():
        for batch in batches:
            batch._linger_time = 0.0
            waiting = True
    if waiting and not accumulator._waiter_future.done():
        accumulator._waiter_future.set_result(None)
