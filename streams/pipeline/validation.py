"""Stage 1 of the pipeline: validate an ingress record. Pure functions, one rule each.

Every rule raises :class:`~streams.contract.reasons.EventError` with a reason code and a human
detail; the agent copies the record to ``esb.rejected.<publisher>`` with both. The order is
cheapest first, and the signature is checked before the payload is decoded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.contract.codec import HEADER_SIZE, WriterSchema, decode_body, schema_id_of
from streams.contract.envelope import UNREADABLE_HEADER, Envelope, parse_time
from streams.contract.reasons import EventError, Reason
from streams.contract.signing import KeyRing, canonical_bytes

INGRESS_PREFIX = "esb.ingress."
# The bus operator: its gateway keys sign events the HTTP gateway accepted for an institution
# after verifying that institution's own credentials and signature at the edge. Its other
# keys (the delivery key) are never accepted on ingress.
OPERATOR = "ega"
# What the gateway adds to every event it publishes.
VIA_HEADER, VIA_GATEWAY = "esb_via", b"gateway"


@dataclass(frozen=True, slots=True)
class IngressRecord:
    """A record as read from an ingress topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0

    @property
    def position(self) -> tuple[str, int, int]:
        """Where the record is: topic, partition, offset."""
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what the bus accepts."""

    max_value_bytes: int = 1_000_000
    max_future_skew: dt.timedelta = dt.timedelta(minutes=5)


class TypeInfo(Protocol):
    """What validation needs of an event type (``EventTypeRecord`` from the live registry)."""

    @property
    def name(self) -> str: ...  # pragma: no cover

    @property
    def owner(self) -> str: ...  # pragma: no cover

    @property
    def key(self) -> str: ...  # pragma: no cover


@dataclass(frozen=True)
class Directory:
    """The registry facts validation reads: event types, key owners, public keys.

    ``gateway_keys`` are the operator's keys the HTTP gateway signs with: accepted only on
    events that came through the gateway, for the institution the event names.
    ``refused_keys`` are never accepted (the published demo keys, outside the dev stack).
    ``withheld`` institutions have a registry record the view cannot read: none of their keys
    is known, and the rejection says why.
    """

    event_types: Mapping[str, TypeInfo]
    key_owners: Mapping[str, str]
    keyring: KeyRing = field(default_factory=KeyRing)
    operator: str | None = OPERATOR
    gateway_keys: frozenset[str] = frozenset()
    refused_keys: frozenset[str] = frozenset()
    withheld: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ValidEvent:
    """An ingress record that passed every rule."""

    record: IngressRecord
    envelope: Envelope
    publisher: str
    writer: WriterSchema
    payload: dict[str, Any]


def publisher_of(topic: str) -> str:
    """The institution whose ingress topic this is."""
    return topic[len(INGRESS_PREFIX) :] if topic.startswith(INGRESS_PREFIX) else ""


def check_size(record: IngressRecord, limits: Limits) -> bytes:
    """The value, if present and within the size limit."""
    if record.value is None or len(record.value) < HEADER_SIZE:
        raise EventError(Reason.WIRE_FORMAT, "the record has no Avro value")
    if len(record.value) > limits.max_value_bytes:
        raise EventError(
            Reason.OVERSIZE,
            f"value is {len(record.value)} bytes; the limit is {limits.max_value_bytes}",
        )
    return record.value


def check_origin(envelope: Envelope, publisher: str, directory: Directory) -> TypeInfo:
    """The type is known, ``publisher`` owns it and ``ce_source`` names ``publisher``."""
    event_type = directory.event_types.get(envelope.type)
    if event_type is None:
        raise EventError(Reason.UNKNOWN_TYPE, f"{envelope.type!r} is not in the registry")
    if envelope.institution != publisher:
        raise EventError(
            Reason.SOURCE_MISMATCH,
            f"ce_source names {envelope.institution!r} but the record is on {publisher!r}'s "
            "ingress topic",
        )
    if event_type.owner != publisher:
        raise EventError(
            Reason.NOT_OWNER, f"{envelope.type} is owned by {event_type.owner}, not {publisher}"
        )
    return event_type


def check_signature(
    envelope: Envelope,
    value: bytes,
    publisher: str,
    directory: Directory,
    *,
    via_gateway: bool = False,
) -> None:
    """The signature verifies with a current key of the publishing institution, or with a
    gateway key of the operator when the event came through the gateway."""
    key_id = envelope.sig_key_id
    if not key_id or not envelope.signature:
        raise EventError(Reason.MISSING_HEADER, "missing ce_sigkeyid or ce_signature")
    if key_id in directory.refused_keys:
        raise EventError(
            Reason.UNKNOWN_KEY,
            f"key id {key_id!r} is a published demo key: refused outside the dev stack",
        )
    owner = directory.key_owners.get(key_id)
    public_key = directory.keyring.get(key_id)
    if (owner is None or public_key is None) and publisher in directory.withheld:
        raise EventError(
            Reason.UNKNOWN_KEY,
            f"the registry record of {publisher} cannot be read by the bus (malformed or of a "
            "newer format): its keys are withheld until it is rewritten",
        )
    if owner is None or public_key is None:
        raise EventError(Reason.UNKNOWN_KEY, f"key id {key_id!r} is not registered")
    if key_id in directory.gateway_keys and owner == directory.operator:
        if not via_gateway:
            raise EventError(
                Reason.UNKNOWN_KEY,
                f"key id {key_id!r} is the gateway's: accepted only on events that came "
                "through the gateway",
            )
    elif owner != publisher:
        raise EventError(Reason.UNKNOWN_KEY, f"key id {key_id!r} is not a key of {publisher}")
    signed = canonical_bytes(envelope.id, envelope.source, envelope.type, envelope.time, value)
    if not public_key.verify(signed, envelope.signature):
        raise EventError(Reason.BAD_SIGNATURE, f"signature does not verify with {key_id}")


def check_time(envelope: Envelope, now: dt.datetime, limits: Limits) -> None:
    """``ce_time`` is not further in the future than clock skew explains."""
    if parse_time(envelope.time) - now > limits.max_future_skew:
        raise EventError(
            Reason.FUTURE_TIME,
            f"ce_time {envelope.time} is more than {limits.max_future_skew} ahead of the bus",
        )


def check_payload(
    envelope: Envelope, value: bytes, writer: WriterSchema | None, event_type: TypeInfo
) -> tuple[WriterSchema, dict[str, Any]]:
    """The value's schema is this type's and the payload decodes fully."""
    schema_id = schema_id_of(value)
    if writer is None:
        raise EventError(Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is not registered")
    if writer.full_name != envelope.type:
        raise EventError(
            Reason.SCHEMA_MISMATCH,
            f"schema id {schema_id} is {writer.full_name or 'not a record'}, not {envelope.type}",
        )
    payload = decode_body(writer.parsed, value)
    if not isinstance(payload, dict):
        raise EventError(Reason.UNDECODABLE, "payload is not a record")
    key_value = payload.get(event_type.key)
    if key_value != envelope.subject:
        raise EventError(
            Reason.INVALID_PAYLOAD,
            f"ce_subject does not match the payload's key field {event_type.key!r}",
        )
    return writer, payload


def validate(
    record: IngressRecord,
    directory: Directory,
    writer: WriterSchema | None,
    now: dt.datetime,
    limits: Limits = Limits(),
) -> ValidEvent:
    """Every rule in order; the first that fails raises :class:`EventError`.

    ``writer`` is the registered schema for the value's schema id (None if the registry has
    no such id); the caller resolves it, so this stays free of I/O.
    """
    if record.headers and record.headers[0][0] == UNREADABLE_HEADER:
        raise EventError(Reason.INVALID_HEADER, (record.headers[0][1] or b"").decode())
    value = check_size(record, limits)
    envelope = Envelope.from_headers(record.headers)
    publisher = publisher_of(record.topic)
    event_type = check_origin(envelope, publisher, directory)
    via_gateway = (VIA_HEADER, VIA_GATEWAY) in record.headers
    check_signature(envelope, value, publisher, directory, via_gateway=via_gateway)
    check_time(envelope, now, limits)
    schema, payload = check_payload(envelope, value, writer, event_type)
    if record.key is not None and record.key != envelope.subject.encode():
        raise EventError(Reason.INVALID_HEADER, "the Kafka key is not ce_subject")
    return ValidEvent(record, envelope, publisher, schema, payload)
