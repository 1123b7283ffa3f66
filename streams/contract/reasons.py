"""Reason codes of rejected events: the value of the ``esb_reason`` header.

Stable, machine-readable strings; the human explanation goes in ``esb_detail``.

Every code but ``internal`` is the publisher's fault: its event breaks the contract and is
refused for every agreement. ``internal`` is the bus's own fault (an agreement pinned to a
schema version the registry lacks, a delivery schema the registry refuses, a bug): the
publisher's event was valid, the other agreements received it, and the copy on
``esb.rejected.<publisher>`` (with ``esb_subscription`` naming the agreement, or ``*`` when
nothing was delivered) is there for an operator to replay once the cause is fixed
(``govesb rejected replay``). A publisher need not act on it.
``undeliverable`` comes from the output path: a valid event the broker would not store for a
subscriber (too large for the delivery topic, topic absent, not authorized).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why the bus refused an event (or, for ``internal``, failed to deliver it)."""

    MISSING_HEADER = "missing-header"
    INVALID_HEADER = "invalid-header"
    UNKNOWN_TYPE = "unknown-type"
    NOT_OWNER = "not-owner"
    SOURCE_MISMATCH = "source-mismatch"
    WIRE_FORMAT = "wire-format"
    UNKNOWN_SCHEMA_ID = "unknown-schema-id"
    SCHEMA_MISMATCH = "schema-mismatch"
    UNDECODABLE = "undecodable"
    TRAILING_BYTES = "trailing-bytes"
    INVALID_PAYLOAD = "invalid-payload"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    OVERSIZE = "oversize"
    DUPLICATE = "duplicate"
    FUTURE_TIME = "future-time"
    INTERNAL = "internal"
    # A valid event whose delivery the broker refused for good (too large for the delivery
    # topic, topic absent or not authorized): esb_detail says which topic, size and error.
    UNDELIVERABLE = "undeliverable"
    # Requests and answers (streams.contract.requests).
    UNKNOWN_API = "unknown-api"
    NO_GRANT = "no-grant"
    RATE_EXCEEDED = "rate-exceeded"
    BAD_TICKET = "bad-ticket"
    LATE_ANSWER = "late-answer"
    PROVIDER_ERROR = "provider-error"
    PROVIDER_UNAVAILABLE = "provider-unavailable"
    PROVIDER_SIGNATURE = "provider-signature"
    INVALID_ANSWER = "invalid-answer"
    TIMED_OUT = "timed-out"


MAX_DETAIL = 300
"""Longest ``esb_detail`` (and audit ``detail``), in characters: a reason, not a dump."""

# Reasons given after validation (delivery, output path): no ingress record alone causes
# them, so the malformed corpus cannot hold a case for them.
OUTPUT_REASONS = frozenset({Reason.INTERNAL, Reason.UNDELIVERABLE})
# Reasons of requests and answers refused by the pipeline (tests/unit/test_requests.py has a
# case for each, as the malformed corpus has for the event path's).
REQUEST_REASONS = frozenset(
    {Reason.UNKNOWN_API, Reason.NO_GRANT, Reason.RATE_EXCEEDED, Reason.BAD_TICKET,
     Reason.LATE_ANSWER}
)  # fmt: skip
# Reasons of answers, not of rejected ingress records (the provider connector and the gateway
# give them; the malformed corpus has no case for them either).
ANSWER_REASONS = frozenset(
    {Reason.PROVIDER_ERROR, Reason.PROVIDER_UNAVAILABLE, Reason.PROVIDER_SIGNATURE,
     Reason.INVALID_ANSWER, Reason.TIMED_OUT}
)  # fmt: skip


class EventError(ValueError):
    """An event the bus refuses, with its reason code and a human detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: What each reason code means, for publishers (the AsyncAPI documents; deploy/ONBOARDING.md).
REASON_DOCS: dict[Reason, str] = {
    Reason.MISSING_HEADER: "a required `ce_*` header is absent or empty (`ce_sigkeyid` and "
    "`ce_signature` included)",
    Reason.INVALID_HEADER: "`ce_specversion` not `1.0`, `ce_id` not a UUID, `ce_source` "
    "malformed, `ce_time` not RFC 3339, `content-type` not `application/avro`, a header not "
    "UTF-8, or Kafka key not `ce_subject`",
    Reason.UNKNOWN_TYPE: "`ce_type` is not an event type in the registry",
    Reason.NOT_OWNER: "the event type belongs to another institution",
    Reason.SOURCE_MISMATCH: "`ce_source` names another institution than the ingress topic",
    Reason.WIRE_FORMAT: "no value, or not Confluent wire format (0x00 + 4-byte schema id)",
    Reason.UNKNOWN_SCHEMA_ID: "the schema id is not registered (or not Avro)",
    Reason.SCHEMA_MISMATCH: "the schema id is another record's, not `ce_type`'s",
    Reason.UNDECODABLE: "the payload does not decode with its schema",
    Reason.TRAILING_BYTES: "bytes are left after the Avro record",
    Reason.INVALID_PAYLOAD: "`ce_subject` differs from the payload's key field, or processing "
    "failed",
    Reason.UNKNOWN_KEY: "`ce_sigkeyid` is not a registered, unrevoked key of the publisher",
    Reason.BAD_SIGNATURE: "the signature does not verify over the canonical bytes",
    Reason.OVERSIZE: "the value is over the bus's size limit",
    Reason.DUPLICATE: "the same source and event id were already received within the duplicate "
    "window",
    Reason.FUTURE_TIME: "`ce_time` is ahead of the bus's clock",
    Reason.INTERNAL: "not the publisher's fault: the event was valid and went to every other "
    "agreement, but the bus could not deliver it under the agreement named in "
    "`esb_subscription`; the operator fixes it and replays the copy (`govesb rejected replay`)",
    Reason.UNDELIVERABLE: "not the publisher's fault: the event was valid, but the broker "
    "refused its delivery to a subscriber for good (too large for the delivery topic, topic "
    "absent or not authorized); `esb_detail`, `esb_refused_topic` and `esb_refused_bytes` say "
    "what; the other subscribers got it",
    Reason.UNKNOWN_API: "the request names an api code no institution serves",
    Reason.NO_GRANT: "the requester has no grant for this api code",
    Reason.RATE_EXCEEDED: "the requester sent more requests for this api code than its grant's "
    "`rate_per_s`",
    Reason.BAD_TICKET: "an answer without the request's reply ticket, with one the bus did not "
    "sign, or for a request routed to another provider or api code",
    Reason.LATE_ANSWER: "an answer after the service's deadline plus its `late_answers_s`",
    Reason.PROVIDER_ERROR: "the provider answered that it could not serve the request "
    "(`success: false`); its message is passed on",
    Reason.PROVIDER_UNAVAILABLE: "the provider's endpoint could not be reached or kept failing "
    "(every bounded retry was used before the deadline)",
    Reason.PROVIDER_SIGNATURE: "the provider's answer is unsigned, or not signed by a current "
    "key of the provider",
    Reason.INVALID_ANSWER: "the provider's answer does not match the service's response schema",
    Reason.TIMED_OUT: "no answer came before the service's deadline (a late answer still reaches "
    "`esb.reply.<requester>`)",
}
