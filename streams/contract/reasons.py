"""Reason codes of rejected events: the value of the ``esb_reason`` header.

Stable, machine-readable strings; the human explanation goes in ``esb_detail``.

Every code but ``internal`` is the publisher's fault: its event breaks the contract and is
refused for every agreement. ``internal`` is the bus's own fault (an agreement pinned to a
schema version the registry lacks, a delivery schema the registry refuses, a bug): the
publisher's event was valid, the other agreements received it, and the copy on
``esb.rejected.<publisher>`` (with ``esb_subscription`` naming the agreement, or ``*`` when
nothing was delivered) is there for an operator to replay once the cause is fixed
(``govesb rejected replay``). A publisher need not act on it.
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


class EventError(ValueError):
    """An event the bus refuses, with its reason code and a human detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
