"""librdkafka's errors, as the worker's output path classifies them: the same Kafka error
means the same thing whichever client wrote the record (``streams.pipeline.rdproducer``)."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    IllegalStateError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from confluent_kafka import KafkaError

from streams.pipeline.outputs import Failure, classify
from streams.pipeline.rdproducer import aiokafka_error


@pytest.mark.parametrize(
    ("code", "error_class", "failure"),
    [
        # the broker's answers keep their meaning
        (KafkaError.MSG_SIZE_TOO_LARGE, MessageSizeTooLargeError, Failure.REFUSED),
        (KafkaError.RECORD_LIST_TOO_LARGE, RecordListTooLargeError, Failure.REFUSED),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, TopicAuthorizationFailedError, Failure.REFUSED),
        (KafkaError.NOT_ENOUGH_REPLICAS, NotEnoughReplicasError, Failure.TRANSIENT),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, UnknownTopicOrPartitionError, Failure.TRANSIENT),
        # librdkafka's own: given up in time, a topic it cannot find, a full queue
        (KafkaError._MSG_TIMED_OUT, KafkaTimeoutError, Failure.TRANSIENT),
        (KafkaError._UNKNOWN_TOPIC, UnknownTopicOrPartitionError, Failure.TRANSIENT),
        (KafkaError._QUEUE_FULL, KafkaTimeoutError, Failure.TRANSIENT),
        (KafkaError._PURGE_QUEUE, KafkaTimeoutError, Failure.TRANSIENT),
    ],
)
def test_a_record_error_keeps_its_kafka_meaning(
    code: int, error_class: type[Exception], failure: Failure
) -> None:
    mapped = aiokafka_error(KafkaError(code, "as librdkafka said it"))
    assert type(mapped) is error_class
    assert "as librdkafka said it" in str(mapped)
    assert classify(mapped) is failure


def test_a_fatal_sequence_error_renews_the_producer_and_any_other_fatal_one_stops_it() -> None:
    fatal_sequence = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "gap", fatal=True)
    assert isinstance(aiokafka_error(fatal_sequence), OutOfOrderSequenceNumber)
    assert classify(aiokafka_error(fatal_sequence)) is Failure.OUT_OF_SEQUENCE
    # a record failed with _FATAL: the producer's error callback named the cause
    record = KafkaError(KafkaError._FATAL, "fatal error")
    cause = KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, "producer id lost", fatal=True)
    assert classify(aiokafka_error(record, cause)) is Failure.OUT_OF_SEQUENCE
    fenced = KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True)
    assert isinstance(aiokafka_error(record, fenced), IllegalStateError)
    assert classify(aiokafka_error(record, fenced)) is Failure.FATAL
    assert classify(aiokafka_error(record)) is Failure.FATAL  # cause unknown: stop


def test_librdkafka_errors_without_an_aiokafka_class_follow_its_retriable_flag() -> None:
    retriable = aiokafka_error(KafkaError(KafkaError._TRANSPORT, "down", retriable=True))
    assert classify(retriable) is Failure.TRANSIENT
    assert "_TRANSPORT" in str(retriable)
    other = aiokafka_error(KafkaError(KafkaError._INVALID_ARG, "bad argument"))
    assert classify(other) is Failure.REFUSED
