"""Reason codes of rejected events: the value of the ``esb_reason`` header.

Stable, machine-readable strings; the human explanation goes in ``esb_detail``. Every reason
but ``undeliverable`` comes from validation; ``undeliverable`` from the output path (a valid
event the broker would not store for a subscriber).
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
    # A valid event whose delivery the broker refused for good (too large for the delivery
    # topic, topic absent or not authorized): esb_detail says which topic, size and error.
    UNDELIVERABLE = "undeliverable"


# Reasons given after validation, by the worker's output path: no ingress record alone
# causes them, so the malformed corpus cannot hold a case for them.
OUTPUT_REASONS = frozenset({Reason.UNDELIVERABLE})


class EventError(ValueError):
    """An event the bus refuses, with its reason code and a human detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
