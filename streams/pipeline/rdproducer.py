"""An asyncio producer over librdkafka (confluent-kafka): the worker's outputs with
``GOVESB_OUTPUT_CLIENT=librdkafka``.

aiokafka builds batches, produce requests and their answers in Python, on the event loop the
pipeline needs for its own work (py-spy: its ``send`` and sender took about a fifth of a busy
worker's samples). librdkafka does all of that in its own threads, outside the GIL;
``produce()`` costs a few microseconds. Measured on 2 cores shared with the broker
(``make bench``), that did not make the worker cheaper: the same worker CPU per event, more
broker CPU, hence an opt-in. :class:`RdProducer` gives it aiokafka's shape:
``await send(...)`` queues a record and returns a future that the broker's acknowledgement
resolves, and a failure is the aiokafka error of the same Kafka error code
(:func:`aiokafka_error`), so that the worker classifies every failure one way whichever client
wrote the record (``streams.pipeline.outputs.classify``).

Delivery reports are served on the event loop's own thread: while any record waits for its
answer, the producer is polled every :data:`POLL_S` (``poll(0)`` never blocks). A thread of
its own would take the GIL back once per report, from a loop that holds it between
switches: measured here, a worker through such a thread handled 0.68x what it did through
aiokafka, its loop waiting for the GIL. Records are acked by all in-sync replicas,
idempotent and ordered per partition (``acks=all``, ``enable.idempotence``), and keyed
records go to the partition Java clients and aiokafka choose (``murmur2_random``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from aiokafka import errors as aiokafka_errors
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, Producer

from streams.pipeline.outputs import absent_topic_error
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1_048_576
"""aiokafka's default, named because rejection copies are cut to fit it: the largest record
(with its headers) the bus's producers send (librdkafka's ``message.max.bytes``)."""

POLL_S = 0.001
"""How often the producer is polled for delivery reports while records wait for them."""

_LOCAL_ERRORS: dict[int, type[aiokafka_errors.KafkaError]] = {
    # librdkafka gave up within message.timeout.ms (the broker unreachable, a leader missing)
    RdKafkaError._MSG_TIMED_OUT: aiokafka_errors.KafkaTimeoutError,
    RdKafkaError._TIMED_OUT: aiokafka_errors.KafkaTimeoutError,
    RdKafkaError._QUEUE_FULL: aiokafka_errors.KafkaTimeoutError,
    # the topic is absent from the cluster's metadata (the worker then asks the cluster)
    RdKafkaError._UNKNOWN_TOPIC: aiokafka_errors.UnknownTopicOrPartitionError,
    RdKafkaError._UNKNOWN_PARTITION: aiokafka_errors.UnknownTopicOrPartitionError,
    # the producer was stopped with the record still queued: it is sent again
    RdKafkaError._PURGE_QUEUE: aiokafka_errors.KafkaTimeoutError,
    RdKafkaError._PURGE_INFLIGHT: aiokafka_errors.KafkaTimeoutError,
    RdKafkaError._DESTROY: aiokafka_errors.ProducerClosed,
}
# A fatal error of the idempotent producer caused by the broker losing its sequence numbers:
# a new producer (new producer id) can go on, as after aiokafka's OutOfOrderSequenceNumber.
_OUT_OF_SEQUENCE_CODES = frozenset({
    RdKafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    RdKafkaError.UNKNOWN_PRODUCER_ID,
    RdKafkaError.INVALID_PRODUCER_EPOCH,
    RdKafkaError._GAPLESS_GUARANTEE,
    RdKafkaError._INCONSISTENT,
})  # fmt: skip


class RetriableError(aiokafka_errors.KafkaError):  # type: ignore[misc]
    """A librdkafka error it calls retriable that has no aiokafka class of its own."""

    retriable = True


def aiokafka_error(
    error: RdKafkaError, fatal: RdKafkaError | None = None
) -> aiokafka_errors.KafkaError:
    """The aiokafka error for librdkafka's ``error``, with librdkafka's text.

    A broker error code maps to aiokafka's class of that code; librdkafka's own (negative)
    codes map as :data:`_LOCAL_ERRORS` says. A fatal error is the producer's (``fatal``: the
    one its error callback reported, which names the cause of a record's ``_FATAL``):
    out-of-sequence ones become ``OutOfOrderSequenceNumber`` (a new producer goes on), any
    other ``IllegalStateError`` (nothing sent again through it can succeed).
    """
    code, text = error.code(), error.str()
    if error.fatal() or code == RdKafkaError._FATAL:
        cause = fatal.code() if (code == RdKafkaError._FATAL and fatal is not None) else code
        if cause in _OUT_OF_SEQUENCE_CODES:
            return aiokafka_errors.OutOfOrderSequenceNumber(text)
        return aiokafka_errors.IllegalStateError(f"fatal producer error: {text}")
    if code >= 0:
        found = aiokafka_errors.for_code(code)
        if found is not aiokafka_errors.UnknownError:
            return found(text)
    if code in _LOCAL_ERRORS:
        return _LOCAL_ERRORS[code](text)
    if error.retriable():
        return RetriableError(f"{error.name()}: {text}")
    return aiokafka_errors.KafkaError(f"{error.name()}: {text}")


class RdProducer:
    """``send`` queues a record in librdkafka and returns the future of its acknowledgement.

    ``config`` is librdkafka's (``bootstrap.servers``, security, batching); acks=all and
    idempotence are set here and cannot be turned off.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {
            **config,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "logger": log,
            "error_cb": self._client_error,
        }
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent = asyncio.Event()  # set once a record is queued: polling starts
        self._poller: asyncio.Task[None] | None = None
        self.fatal: RdKafkaError | None = None
        """The fatal error librdkafka reported, if any: the producer is unusable since."""

    def _client_error(self, error: RdKafkaError) -> None:
        if error.fatal():
            self.fatal = error
            log.error("the producer failed for good: %s", error.str())
        else:  # brokers unreachable and the like: librdkafka reconnects by itself
            log.debug("producer: %s", error.str())

    @classmethod
    def for_cluster(cls, kafka: KafkaSettings, **config: Any) -> RdProducer:
        """A producer for ``kafka`` (its servers, TLS and SASL), records of up to
        :data:`MAX_REQUEST_BYTES`; ``config`` adds librdkafka settings (``linger.ms``, ...)."""
        return cls({**kafka.librdkafka_options(), "message.max.bytes": MAX_REQUEST_BYTES,
                    **config})  # fmt: skip

    async def start(self) -> None:
        """Create the producer and start serving its delivery reports."""
        self._loop = asyncio.get_running_loop()
        self._producer = Producer(self.config)
        self._poller = self._loop.create_task(self._serve(self._producer), name="deliveries")

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Iterable[tuple[str, str | bytes | None]] | None = None,
    ) -> asyncio.Future[None]:
        """Queue one record; the future is resolved (or failed with an aiokafka error) by the
        broker's answer. Raises the aiokafka error at once for what librdkafka refuses to
        queue (a record over ``message.max.bytes``, a full queue)."""
        producer, loop = self._producer, self._loop
        if producer is None or loop is None:
            raise aiokafka_errors.ProducerClosed()
        future: asyncio.Future[None] = loop.create_future()
        try:
            producer.produce(topic, value, key, headers=list(headers) if headers else None,
                             on_delivery=partial(self._delivered, future))  # fmt: skip
            if not self._sent.is_set():
                self._sent.set()
        except BufferError as full:
            raise aiokafka_errors.KafkaTimeoutError(f"the output queue is full: {full}") from None
        except KafkaException as refused:
            raise aiokafka_error(refused.args[0], self.fatal) from None
        return future

    def _delivered(
        self, future: asyncio.Future[None], error: RdKafkaError | None, _message: Any
    ) -> None:
        if future.done():  # its waiter was cancelled
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(aiokafka_error(error, self.fatal))

    async def _serve(self, producer: Producer) -> None:
        """Poll for delivery reports while records wait for them; sleep while none does."""
        while True:
            if len(producer) == 0:
                self._sent.clear()
                await self._sent.wait()
            producer.poll(0)  # calls _delivered for every report that is ready
            await asyncio.sleep(POLL_S)

    async def refusal(
        self, topic: str, timeout_s: float = 10.0
    ) -> aiokafka_errors.KafkaError | None:
        """The error the cluster's metadata gives ``topic`` now (absent, not authorized), or
        None when it is there or the cluster cannot be asked."""
        producer = self._producer
        if producer is None:
            return None
        try:
            metadata = await asyncio.to_thread(producer.list_topics, topic, timeout_s)
        except KafkaException:
            return None
        found = metadata.topics.get(topic)
        error = found.error if found is not None else None
        absent = error is not None and error.code() == RdKafkaError.UNKNOWN_TOPIC_OR_PART
        if found is None or absent:
            return absent_topic_error(topic)
        return aiokafka_error(error) if error is not None else None

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Wait (at most ``timeout_s``) until every queued record is answered, then stop;
        what is still unanswered then fails (whoever waits for it sends it again)."""
        producer, poller = self._producer, self._poller
        if producer is None or poller is None:
            return
        give_up_at = time.monotonic() + timeout_s
        while len(producer) > 0 and time.monotonic() < give_up_at:  # noqa: ASYNC110 - librdkafka state
            await asyncio.sleep(0.01)  # the poller serves the answers meanwhile
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        if len(producer) > 0:
            log.warning("%d record(s) unanswered at shutdown; they fail", len(producer))
            producer.purge()
            producer.poll(0)
        self._producer = self._poller = None
