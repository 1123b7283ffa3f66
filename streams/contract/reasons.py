"""Reason codes of rejected events: the value of the ``esb_reason`` header.

Stable, machine-readable strings; the human explanation goes in ``esb_detail``.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why the bus refused an event."""

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


class EventError(ValueError):
    """An event the bus refuses, with its reason code and a human detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: What each reason code means, for the publishers' documentation (the AsyncAPI documents).
REASON_DOCS: dict[Reason, str] = {
    Reason.MISSING_HEADER: "a required CloudEvents header is absent",
    Reason.INVALID_HEADER: "a header is not valid (not UTF-8, not a UUID, not RFC 3339, "
    "wrong spec version or content type)",
    Reason.UNKNOWN_TYPE: "`ce_type` is not in the catalogue",
    Reason.NOT_OWNER: "the publisher does not own the event type",
    Reason.SOURCE_MISMATCH: "`ce_source` names another institution than the topic",
    Reason.WIRE_FORMAT: "the value is not in Confluent wire format (0x00, 4-byte schema id, Avro)",
    Reason.UNKNOWN_SCHEMA_ID: "the schema id is not registered",
    Reason.SCHEMA_MISMATCH: "the schema id is not a version of the event type's subject",
    Reason.UNDECODABLE: "the payload does not decode with its schema",
    Reason.TRAILING_BYTES: "bytes are left after the decoded payload",
    Reason.INVALID_PAYLOAD: "the payload decodes but is not acceptable (e.g. `ce_subject` is not "
    "its key field)",
    Reason.UNKNOWN_KEY: "`ce_sigkeyid` is not a registered, unrevoked key of the publisher",
    Reason.BAD_SIGNATURE: "the signature does not verify",
    Reason.OVERSIZE: "the record is larger than the bus accepts",
    Reason.DUPLICATE: "an event with this source and id was received within the duplicate window",
    Reason.FUTURE_TIME: "`ce_time` is in the future",
}
