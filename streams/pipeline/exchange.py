"""Requests and answers through the pipeline: validate, ticket, route, minimise. Pure.

The contract is :mod:`streams.contract.requests`. A request on the requester's ingress
topic is checked (envelope, origin, signature, time, the api code served, the requester's
grant, the schema, the grant's rate) and becomes the request on ``esb.request.<provider>``
with a reply ticket signed by the bus. An answer on the provider's ingress topic is checked
(envelope, origin, signature, the ticket, in time, the schema) and becomes the answer on
``esb.reply.<requester>``, minimised to the requester's grant. Every refusal raises
:class:`EventError` with its reason, as the event path's rules do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.contract.codec import WriterSchema, decode_body, schema_id_of
from streams.contract.envelope import UNREADABLE_HEADER, Envelope
from streams.contract.reasons import EventError, Reason
from streams.contract.requests import (
    API_HEADER,
    MAX_MESSAGE,
    MESSAGE_HEADER,
    STATUS_HEADER,
    Status,
    Ticket,
    TicketError,
    answer_id,
    header,
    read_ticket,
)
from streams.pipeline.routing import mask_value
from streams.pipeline.validation import (
    VIA_GATEWAY,
    VIA_HEADER,
    Directory,
    IngressRecord,
    Limits,
    check_signature,
    check_size,
    check_time,
    publisher_of,
)
from streams.registry.model import Grant
from streams.registry.view import ServiceRecord

# Answers that say the provider could not answer may carry no value.
_ERROR_REASONS = {
    str(r): r
    for r in (
        Reason.PROVIDER_ERROR,
        Reason.PROVIDER_UNAVAILABLE,
        Reason.PROVIDER_SIGNATURE,
        Reason.INVALID_ANSWER,
        Reason.OVERSIZE,
    )
}


@dataclass(frozen=True)
class Services:
    """The registry facts requests and answers need: services by api code, grants by id."""

    services: Mapping[str, ServiceRecord]
    grants: Mapping[str, Grant]

    def of_type(self, type_name: str) -> tuple[ServiceRecord, str] | None:
        """The service whose request or response record ``type_name`` is, and which."""
        for service in self.services.values():
            if service.request_type == type_name:
                return service, "request"
            if service.response_type == type_name:
                return service, "response"
        return None

    def grant(self, consumer: str, api_code: str) -> Grant | None:
        """The grant letting ``consumer`` call ``api_code``."""
        return next(
            (g for g in self.grants.values() if g.consumer == consumer and g.api_code == api_code),
            None,
        )

    def requesters(self) -> frozenset[str]:
        """Institutions with a grant: those that have an ``esb.reply`` topic."""
        return frozenset(g.consumer for g in self.grants.values())


@dataclass
class RateGate:
    """A token bucket per grant: ``rate_per_s`` requests a second, bursts of one second's
    worth. Driven by the caller's clock, so it is pure and testable."""

    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def admit(self, grant: Grant, now_s: float) -> bool:
        """Whether one more request under ``grant`` fits its rate at ``now_s``."""
        capacity = max(1.0, grant.rate_per_s)
        tokens, at = self._buckets.get(grant.id, (capacity, now_s))
        tokens = min(capacity, tokens + max(0.0, now_s - at) * grant.rate_per_s)
        if tokens < 1.0:
            self._buckets[grant.id] = (tokens, now_s)
            return False
        self._buckets[grant.id] = (tokens - 1.0, now_s)
        return True


@dataclass(frozen=True, slots=True)
class ValidRequest:
    """A request that passed every rule."""

    envelope: Envelope
    requester: str
    service: ServiceRecord
    grant: Grant
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ValidAnswer:
    """An answer that passed every rule: whose request it answers and what it says."""

    envelope: Envelope
    provider: str
    service: ServiceRecord
    ticket: Ticket
    status: Status
    payload: dict[str, Any] | None
    reason: Reason | None = None
    message: str = ""


def type_of(record: IngressRecord) -> str:
    """The ``ce_type`` a record claims (unchecked), to tell requests and answers from events."""
    raw = header(record.headers, "ce_type")
    return raw.decode(errors="replace") if raw else ""


def _envelope(record: IngressRecord, *, answer: bool) -> tuple[Envelope, str]:
    if record.headers and record.headers[0][0] == UNREADABLE_HEADER:
        raise EventError(Reason.INVALID_HEADER, (record.headers[0][1] or b"").decode())
    envelope = Envelope.from_headers(record.headers)
    publisher = publisher_of(record.topic)
    if envelope.institution != publisher:
        raise EventError(
            Reason.SOURCE_MISMATCH,
            f"ce_source names {envelope.institution!r} but the record is on {publisher!r}'s "
            "ingress topic",
        )
    request_id = envelope.correlation_id if answer else envelope.id
    if not request_id or envelope.subject != request_id:
        raise EventError(
            Reason.INVALID_HEADER,
            "ce_subject must be the request id"
            + (" (ce_correlationid of an answer)" if answer else " (ce_id of a request)"),
        )
    if record.key is not None and record.key != envelope.subject.encode():
        raise EventError(Reason.INVALID_HEADER, "the Kafka key is not the request id")
    return envelope, publisher


def _decoded(value: bytes, writer: WriterSchema | None, type_name: str) -> dict[str, Any]:
    if writer is None:
        raise EventError(
            Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id_of(value)} is not registered"
        )
    if writer.full_name != type_name:
        raise EventError(
            Reason.SCHEMA_MISMATCH,
            f"schema id {writer.id} is {writer.full_name or 'not a record'}, not {type_name}",
        )
    payload = decode_body(writer.parsed, value)
    if not isinstance(payload, dict):
        raise EventError(Reason.UNDECODABLE, "payload is not a record")
    return payload


def _signed_by_publisher(
    envelope: Envelope, value: bytes, publisher: str, record: IngressRecord, directory: Directory
) -> None:
    via_gateway = (VIA_HEADER, VIA_GATEWAY) in record.headers
    check_signature(envelope, value, publisher, directory, via_gateway=via_gateway)


def validate_request(
    record: IngressRecord,
    service: ServiceRecord,
    services: Services,
    directory: Directory,
    writer: WriterSchema | None,
    now: dt.datetime,
    limits: Limits,
) -> ValidRequest:
    """Every rule for a request, in order; the first that fails raises :class:`EventError`.

    The rate is checked by the caller, last, so that a refused request uses none of it.
    """
    value = check_size(record, limits)
    envelope, requester = _envelope(record, answer=False)
    if envelope.type != service.request_type:
        raise EventError(
            Reason.SCHEMA_MISMATCH,
            f"ce_type is {envelope.type[:80]!r}; a request for {service.api_code} is "
            f"{service.request_type}",
        )
    named = header(record.headers, API_HEADER)
    if named is not None and named.decode(errors="replace") != service.api_code:
        raise EventError(
            Reason.INVALID_HEADER, f"esb_api names another api than {service.api_code}"
        )
    _signed_by_publisher(envelope, value, requester, record, directory)
    check_time(envelope, now, limits)
    grant = services.grant(requester, service.api_code)
    if grant is None:
        raise EventError(Reason.NO_GRANT, f"{requester} has no grant for {service.api_code}")
    payload = _decoded(value, writer, service.request_type)
    return ValidRequest(envelope, requester, service, grant, payload)


def validate_answer(
    record: IngressRecord,
    service: ServiceRecord,
    directory: Directory,
    writer: WriterSchema | None,
    now: dt.datetime,
    limits: Limits,
) -> ValidAnswer:
    """Every rule for an answer, in order; the first that fails raises :class:`EventError`."""
    status_text = (header(record.headers, STATUS_HEADER) or b"answered").decode(errors="replace")
    if status_text not in (Status.ANSWERED, Status.PROVIDER_ERROR):
        raise EventError(
            Reason.INVALID_HEADER, "esb_status of an answer is answered or provider-error"
        )
    status = Status(status_text)
    if status is Status.ANSWERED:
        value = check_size(record, limits)
    else:
        value = record.value or b""
        if len(value) > limits.max_value_bytes:
            raise EventError(Reason.OVERSIZE, f"value is {len(value)} bytes")
    envelope, provider = _envelope(record, answer=True)
    if service.provider != provider:
        raise EventError(
            Reason.NOT_OWNER, f"{service.api_code} is served by {service.provider}, not {provider}"
        )
    _signed_by_publisher(envelope, value, provider, record, directory)
    check_time(envelope, now, limits)
    try:
        ticket = read_ticket(record.headers, directory.keyring, bus_keys(directory))
    except TicketError as error:
        raise EventError(Reason.BAD_TICKET, str(error)) from None
    if ticket.provider != provider or ticket.api_code != service.api_code:
        raise EventError(
            Reason.BAD_TICKET,
            f"the ticket is for {ticket.api_code} served by {ticket.provider}, not "
            f"{service.api_code} by {provider}",
        )
    if envelope.correlation_id != ticket.request_id:
        raise EventError(
            Reason.BAD_TICKET, "ce_correlationid is not the request id the ticket names"
        )
    if envelope.id != answer_id(ticket.request_id):
        # The signature covers the id, not ce_correlationid: bound to the request, an answer
        # cannot be relabelled onto another request.
        raise EventError(
            Reason.INVALID_HEADER, "ce_id of an answer is answer_id(request id) (contract)"
        )
    if now.timestamp() * 1000 > ticket.until_ms:
        raise EventError(
            Reason.LATE_ANSWER, f"the answers to {ticket.request_id} were taken until "
            f"{dt.datetime.fromtimestamp(ticket.until_ms / 1000, dt.UTC).isoformat()}",
        )  # fmt: skip
    if status is Status.ANSWERED:
        return ValidAnswer(
            envelope, provider, service, ticket, status,
            _decoded(value, writer, service.response_type),
        )  # fmt: skip
    reason_text = (header(record.headers, "esb_reason") or b"provider-error").decode(
        errors="replace"
    )
    message = (header(record.headers, MESSAGE_HEADER) or b"").decode(errors="replace")
    return ValidAnswer(
        envelope, provider, service, ticket, status, None,
        _ERROR_REASONS.get(reason_text, Reason.PROVIDER_ERROR), message[:MAX_MESSAGE],
    )  # fmt: skip


def bus_keys(directory: Directory) -> Iterable[str]:
    """The operator's keys that sign for the bus itself (not the gateway's)."""
    return [
        key_id
        for key_id, owner in directory.key_owners.items()
        if owner == directory.operator and key_id not in directory.gateway_keys
    ]


def minimise_answer(payload: dict[str, Any], grant: Grant) -> dict[str, Any]:
    """Only the fields the grant allows, masked where it says; the answer's field order."""
    masked = set(grant.mask)
    return {
        name: mask_value(value) if name in masked else value
        for name, value in payload.items()
        if name in grant.fields
    }
