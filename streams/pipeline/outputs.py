"""What to do when the broker does not take an output: classify the error, and the record
that goes instead. Pure functions; the worker (``streams.pipeline.app``) applies them.

An error is one of three kinds (:func:`classify`), as aiokafka and the broker say:

- ``transient``: it ends by itself (leader election, a broker restarting, a full buffer):
  the same record is sent again after a bounded backoff;
- ``refused``: the broker will never take *this* record (too large, topic not authorized,
  invalid or absent topic, policy): a delivery becomes an ``undeliverable`` rejection to
  the publisher (:func:`undeliverable`), a rejection that does not fit is cut
  (:func:`cut`), so the reason always reaches ``esb.rejected.<publisher>``;
- ``out-of-sequence``: the broker lost step with the idempotent producer's sequence numbers
  for a partition. aiokafka numbers a batch when it drains it and never takes the number
  back, so after the broker refused a batch (too large for the topic, say) every later batch
  to that partition is out of sequence: the worker replaces its producer (new producer id,
  sequences from 0) and sends the record again;
- ``fatal``: the producer itself is unusable (fenced, closed, the cluster refuses it):
  nothing sent again can succeed, the worker must fail loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TypeAlias

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    IllegalStateError,
    InvalidProducerEpoch,
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    PolicyViolationError,
    ProducerClosed,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
    UnsupportedForMessageFormatError,
    UnsupportedVersionError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.contract import topics
from streams.contract.reasons import MAX_DETAIL, Reason
from streams.pipeline.process import Output
from streams.pipeline.validation import IngressRecord, publisher_of

# Bytes of a record batch's own header: a record alone in a batch needs this much more room.
BATCH_OVERHEAD_BYTES = 61
# Broker errors about a whole batch's size: records that fit alone may have shared the batch.
BATCH_SIZE_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
# What a cut copy keeps of a header value, in bytes: enough for an id, a reason, a detail.
HEADER_KEEP_BYTES = 1000
# Headers a cut copy keeps: the bus's own and the event's id and type.
KEPT_HEADERS = ("ce_id", "ce_type", "ce_source")


class Failure(StrEnum):
    """What an output error means for the record (see the module docstring)."""

    TRANSIENT = "transient"
    REFUSED = "refused"
    OUT_OF_SEQUENCE = "out-of-sequence"
    FATAL = "fatal"


class TransientSendError(Exception):
    """A send that may succeed later; carries the Kafka error (for ``until_available``)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


# The producer is unusable: fenced by another with its id, closed, its sequence lost, or
# the cluster refusing it (idempotent writes need cluster authorization on old brokers).
FATAL_ERRORS: tuple[type[BaseException], ...] = (
    ProducerFenced,
    ProducerClosed,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedVersionError,
    IllegalStateError,
)
# The broker no longer agrees with the producer's sequence numbers (or producer id).
OUT_OF_SEQUENCE_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
)
# The broker answers these for one record or topic; sending it again gets the same answer.
REFUSED_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    TopicAuthorizationFailedError,
    InvalidTopicError,
    PolicyViolationError,
    UnsupportedForMessageFormatError,
)


def classify(error: BaseException) -> Failure:
    """Whether ``error`` (raised by ``send`` or set on its future) may pass, is this record's
    for good, or breaks the producer.

    aiokafka marks what may pass with ``retriable``; ``KafkaTimeoutError`` (the send buffer
    stayed full) passes too. Any other broker error is about this record: refused.
    ``UnknownTopicOrPartitionError`` is retriable for Kafka (a topic being created): the
    worker calls it refused only once fresh metadata shows the topic absent
    (:func:`absent_topic_error`).
    """
    if isinstance(error, OUT_OF_SEQUENCE_ERRORS):
        return Failure.OUT_OF_SEQUENCE
    if isinstance(error, FATAL_ERRORS):
        return Failure.FATAL
    if isinstance(error, REFUSED_ERRORS):
        return Failure.REFUSED
    if isinstance(error, KafkaTimeoutError) or getattr(error, "retriable", False):
        return Failure.TRANSIENT
    if isinstance(error, KafkaError):
        return Failure.REFUSED
    return Failure.FATAL


def absent_topic_error(topic: str) -> UnknownTopicOrPartitionError:
    """The error an output gets when the cluster's metadata, just refreshed, lacks its topic."""
    return UnknownTopicOrPartitionError(f"topic {topic} does not exist on the cluster")


def record_size(output: Output) -> int:
    """Bytes the producer counts for ``output`` against ``max_request_size`` (as aiokafka)."""
    return int(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(
            output.key, output.value, list(output.headers)
        )
    )


def fits_alone(output: Output, max_message_bytes: int) -> bool:
    """Whether ``output`` alone in a batch fits a topic's ``max.message.bytes``: the broker
    refuses a whole batch that is too large, the records that would fit with the others."""
    return record_size(output) + BATCH_OVERHEAD_BYTES <= max_message_bytes


def describe(error: BaseException) -> str:
    """``ErrorName: message`` of a Kafka error, for details and logs (no secrets in them)."""
    text = str(error)
    name = type(error).__name__
    return name if not text or text == name else f"{name}: {text}"


def is_rejection(output: Output) -> bool:
    """Whether ``output`` is a copy for ``esb.rejected.<publisher>``."""
    return output.topic.startswith(topics.rejected(""))


ReplayClaim: TypeAlias = Callable[[IngressRecord, str], tuple[tuple[str, bytes], ...]]
"""The bus-signed headers that let one agreement alone receive a record's event again."""


def undeliverable(
    record: IngressRecord,
    refused: Output,
    error: BaseException,
    *,
    limit: int,
    claim: ReplayClaim | None = None,
) -> Output:
    """The ingress record, as it came, to ``esb.rejected.<publisher>`` with reason
    ``undeliverable``: which topic refused which record (its size) and why.

    Headers ``esb_refused_topic`` and ``esb_refused_bytes`` say it for programs; the
    agreement of the refused delivery is in ``esb_subscription`` and, with ``claim``, the
    copy carries the bus's replay claim for it, so ``govesb rejected replay`` sends it to that
    agreement alone once the cause is fixed (as for ``internal``). The copy is cut
    (:func:`cut`) when it would not fit ``limit``.
    """
    agreement = next((v.decode() for k, v in refused.headers if k == "esb_subscription"), "")
    replay = (
        (("esb_subscription", agreement.encode()), *claim(record, agreement))
        if (agreement and claim is not None)
        else ()
    )
    size = record_size(refused)
    detail = f"{refused.topic} refused the {size}-byte record: {describe(error)}"[:MAX_DETAIL]
    headers = (
        *record.headers,
        ("esb_reason", str(Reason.UNDELIVERABLE).encode()),
        ("esb_detail", detail.encode()),
        ("esb_source", f"{record.topic}[{record.partition}]@{record.offset}".encode()),
        ("esb_refused_topic", refused.topic.encode()),
        ("esb_refused_bytes", str(size).encode()),
        *replay,
    )
    rejection = Output(topics.rejected(publisher_of(record.topic)), record.key, record.value,
                       headers)  # fmt: skip
    return rejection if record_size(rejection) <= limit else cut(rejection, limit)


def cut(rejection: Output, limit: int, why: str = "", *, bare: bool = False) -> Output:
    """A rejection copy that fits ``limit`` bytes: first without its value; if that is still
    too large (or ``bare``: the broker refused even that), with only the bus's headers (each
    at most ``HEADER_KEEP_BYTES``), no key and no value.

    Header ``esb_cut`` says what was dropped and why; ``esb_reason`` and ``esb_detail`` always
    stay, so the publisher learns the reason even when its record cannot be returned.
    """
    value_bytes = len(rejection.value or b"")
    reason = why or f"the copy is {record_size(rejection)} bytes, over the {limit}-byte limit"
    headers = tuple((name, value) for name, value in rejection.headers if name != "esb_cut")
    if not bare:
        note = f"value dropped ({value_bytes} bytes): {reason}"
        without_value = Output(rejection.topic, rejection.key, b"",
                               (*headers, ("esb_cut", note.encode())))  # fmt: skip
        if record_size(without_value) <= limit:
            return without_value
    kept = tuple(
        (name, value[:HEADER_KEEP_BYTES])
        for name, value in headers
        if name.startswith("esb_") or name in KEPT_HEADERS
    )
    note = f"value, key and the record's other headers dropped: {reason}"
    return Output(rejection.topic, None, b"", (*kept, ("esb_cut", note.encode())))


def was_cut(output: Output) -> bool:
    """Whether ``output`` is already a cut copy."""
    return any(name == "esb_cut" for name, _ in output.headers)


def is_bare(output: Output) -> bool:
    """Whether ``output`` was cut to its bare reason: nothing more can be dropped."""
    return output.key is None and any(
        name == "esb_cut" and value.startswith(b"value, key") for name, value in output.headers
    )


def instead(
    record: IngressRecord,
    refused: Output,
    error: BaseException,
    limit: int,
    claim: ReplayClaim | None = None,
) -> Output | None:
    """What to send in place of ``refused`` (of ``record``), which the broker refused for good;
    None when nothing can be: the worker must then hold the partition and fail loudly.

    A delivery becomes an ``undeliverable`` rejection; a rejection is cut, then cut to its
    bare reason; an audit record has no substitute (the audit log must not miss one).
    """
    if refused.topic == topics.AUDIT or is_bare(refused):
        return None
    if is_rejection(refused):
        why = f"{refused.topic} refused the {record_size(refused)}-byte copy: {describe(error)}"
        return cut(refused, limit, why, bare=was_cut(refused))
    return undeliverable(record, refused, error, limit=limit, claim=claim)
