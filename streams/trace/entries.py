"""Audit and registry records as the trace index keeps them: parsed, checked, flat.

Pure functions: what the index stores is decided here, and nothing here touches Kafka or a
database. An audit record that is not one (not JSON, no chain or seq) is skipped, never fatal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

# Outcomes written by the worker (received, routed, rejected), the HTTP sink (retrying,
# delivered, dead-lettered), `govesb dlq replay` (replayed) and the data tracker (lookup).
WORKER_OUTCOMES = frozenset({"received", "routed", "rejected"})
SINK_OUTCOMES = frozenset({"retrying", "delivered", "dead-lettered", "replayed"})
# A request routed to its provider, and its answer passed on (or the provider's failure).
CALL_OUTCOMES = frozenset({"requested", "answered", "answer-failed"})
LOOKUP = "lookup"
_RECEIPT = re.compile(r"status=(\d+) attempts=(\d+)(?: latency_ms=(\d+))?")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record, flattened for the index. ``subject`` is a keyed hash, never clear."""

    chain: str
    seq: int
    time: str
    outcome: str
    event_id: str | None
    publisher: str | None
    event_type: str | None
    subscribers: tuple[str, ...]
    agreements: tuple[str, ...]
    reason: str | None
    detail: str | None
    subject: str | None
    source: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a sink's ``reason`` text says about an HTTP attempt."""

    status: int | None
    attempts: int
    latency_ms: int | None


@dataclass(frozen=True, slots=True)
class Agreement:
    """A subscription as the registry held it from ``valid_from`` on (the data tracker's view)."""

    id: str
    subscriber: str
    event_types: tuple[str, ...]
    fields: tuple[str, ...]
    mask: tuple[str, ...]
    purpose: str
    delivery: str
    valid_from: str


def iso(moment: dt.datetime) -> str:
    """The one text form of times in the index: UTC, milliseconds (sorts as text)."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_audit(value: bytes | None) -> AuditEntry | None:
    """The entry of one ``esb.audit`` record, or None when the record is not an audit record."""
    try:
        body = json.loads(value or b"")
        chain, seq = str(body["chain"]), int(body["seq"])
        time = iso(dt.datetime.fromisoformat(str(body["time"])))
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(body, dict):
        return None
    source = body.get("source")
    return AuditEntry(
        chain=chain,
        seq=seq,
        time=time,
        outcome=str(body.get("outcome") or ""),
        event_id=_text(body.get("event_id")),
        publisher=_text(body.get("publisher")),
        event_type=_text(body.get("event_type")),
        subscribers=tuple(str(s) for s in body.get("subscribers") or ()),
        agreements=tuple(str(a) for a in body.get("agreements") or ()),
        reason=_text(body.get("reason")),
        detail=_text(body.get("detail")),
        subject=_text(body.get("subject")),
        source=(
            f"{source[0]}[{source[1]}]@{source[2]}"
            if isinstance(source, list) and len(source) == 3
            else None
        ),
    )


def parse_receipt(reason: str | None) -> Receipt:
    """``status=503 attempts=2 latency_ms=41`` (a sink's receipt) as numbers."""
    found = _RECEIPT.match(reason or "")
    if found is None:
        return Receipt(None, 0, None)
    status = int(found.group(1))
    latency = found.group(3)
    return Receipt(status or None, int(found.group(2)), int(latency) if latency else None)


def parse_agreement(value: bytes, timestamp_ms: int) -> Agreement | None:
    """A ``subscription/<id>`` record of ``esb.registry``; None when it is not readable."""
    try:
        body = json.loads(value)
        return Agreement(
            id=str(body["id"]),
            subscriber=str(body["subscriber"]),
            event_types=tuple(str(t) for t in body.get("event_types") or ()),
            fields=tuple(str(f) for f in body.get("fields") or ()),
            mask=tuple(str(m) for m in body.get("mask") or ()),
            purpose=str(body.get("purpose") or ""),
            delivery=str(body.get("delivery") or "kafka"),
            valid_from=iso(dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def parse_grant(value: bytes, timestamp_ms: int) -> Agreement | None:
    """A ``grant/<id>`` record of ``esb.registry`` as the data tracker sees it: an agreement
    whose consumer receives answers of one api code (``delivery: answer``)."""
    try:
        body = json.loads(value)
        return Agreement(
            id=str(body["id"]),
            subscriber=str(body["consumer"]),
            event_types=(str(body["api_code"]),),
            fields=tuple(str(f) for f in body.get("fields") or ()),
            mask=tuple(str(m) for m in body.get("mask") or ()),
            purpose=str(body.get("purpose") or ""),
            delivery="answer",
            valid_from=iso(dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def parse_service_owner(value: bytes) -> tuple[str, str] | None:
    """``(response record, provider)`` of a ``service/<api code>`` record: whose data an
    answer is."""
    try:
        body = json.loads(value)
        return str(body["response_type"]), str(body["provider"])
    except (ValueError, KeyError, TypeError):
        return None


def parse_owner(value: bytes) -> tuple[str, str] | None:
    """``(event type, owner)`` of an ``event-type/<name>`` record of ``esb.registry``."""
    try:
        body = json.loads(value)
        return str(body["name"]), str(body["owner"])
    except (ValueError, KeyError, TypeError):
        return None


def version_digest(value: bytes) -> str:
    """Which version of a registry record this is (the same bytes, the same version)."""
    return hashlib.sha256(value).hexdigest()[:32]
