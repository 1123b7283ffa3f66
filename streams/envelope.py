"""The CloudEvents 1.0 envelope in Kafka binary mode: attributes as ``ce_*`` headers.

The payload (the Kafka value) is the Avro record in Confluent wire format; the key is the
business key, also carried as ``ce_subject``. Deliveries for HTTP agreements are the exception:
their value is the JSON body the endpoint receives (``content-type: application/json``),
rendered and signed once by the pipeline so the HTTP sink forwards the signed bytes unchanged.
``ce_id`` is stable through every retry and hop: it is the event's identity on the bus.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from streams.reasons import EventError, Reason

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/avro"
JSON_CONTENT_TYPE = "application/json"

_SOURCE = re.compile(
    r"^/institutions/(?P<institution>[a-z][a-z0-9-]*)/systems/(?P<system>[^/\s]+)$"
)
_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject")
_OPTIONAL = {
    "ce_correlationid": "correlation_id",
    "ce_sigkeyid": "sig_key_id",
    "ce_signature": "signature",
}

Headers = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]


def source_for(institution: str, system: str) -> str:
    """The ``ce_source`` of ``system`` at ``institution``."""
    return f"/institutions/{institution}/systems/{system}"


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-27T08:15:00.123Z``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp with an offset; raise ``ValueError`` otherwise."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment


@dataclass(frozen=True, slots=True)
class Envelope:
    """CloudEvents attributes of one bus event."""

    id: str
    source: str
    type: str
    time: str
    subject: str
    correlation_id: str | None = None
    sig_key_id: str | None = None
    signature: str | None = None
    content_type: str = CONTENT_TYPE

    @property
    def institution(self) -> str:
        """The publishing institution, from ``ce_source``."""
        match = _SOURCE.match(self.source)
        return match["institution"] if match else ""

    @property
    def system(self) -> str:
        """The publishing system, from ``ce_source``."""
        match = _SOURCE.match(self.source)
        return match["system"] if match else ""

    def signed(self, key_id: str, signature: str) -> Envelope:
        """A copy carrying ``key_id`` and ``signature``."""
        return replace(self, sig_key_id=key_id, signature=signature)

    def to_headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers in CloudEvents Kafka binary mode."""
        headers = [
            ("ce_specversion", SPEC_VERSION),
            ("ce_id", self.id),
            ("ce_source", self.source),
            ("ce_type", self.type),
            ("ce_time", self.time),
            ("ce_subject", self.subject),
            ("content-type", self.content_type),
        ]
        for header, attribute in _OPTIONAL.items():
            value = getattr(self, attribute)
            if value is not None:
                headers.append((header, value))
        return [(name, value.encode()) for name, value in headers]

    @classmethod
    def from_headers(cls, headers: Headers, accept: tuple[str, ...] = (CONTENT_TYPE,)) -> Envelope:
        """Read and check the envelope; raise :class:`EventError` with the reason.

        The first occurrence of a header counts; values must be UTF-8. ``accept`` lists the
        content types allowed (publishers: Avro only).
        """
        values: dict[str, str] = {}
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, raw in pairs:
            if name in values or raw is None:
                continue
            try:
                values[name] = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            except UnicodeDecodeError:
                raise EventError(Reason.INVALID_HEADER, f"{name} is not valid UTF-8") from None
        missing = [name for name in _REQUIRED if not values.get(name)]
        if missing:
            raise EventError(Reason.MISSING_HEADER, f"missing {', '.join(missing)}")
        if values["ce_specversion"] != SPEC_VERSION:
            raise EventError(
                Reason.INVALID_HEADER,
                f"ce_specversion is {values['ce_specversion']!r}, expected {SPEC_VERSION!r}",
            )
        try:
            uuid.UUID(values["ce_id"])
        except ValueError:
            raise EventError(Reason.INVALID_HEADER, "ce_id is not a UUID") from None
        if not _SOURCE.match(values["ce_source"]):
            raise EventError(
                Reason.INVALID_HEADER,
                "ce_source must be /institutions/<institution>/systems/<system>",
            )
        try:
            parse_time(values["ce_time"])
        except ValueError:
            raise EventError(Reason.INVALID_HEADER, "ce_time is not an RFC 3339 time") from None
        content_type = values.get("content-type", CONTENT_TYPE)
        if content_type not in accept:
            raise EventError(
                Reason.INVALID_HEADER,
                f"content-type is {content_type!r}, expected {' or '.join(accept)}",
            )
        return cls(
            id=values["ce_id"],
            source=values["ce_source"],
            type=values["ce_type"],
            time=values["ce_time"],
            subject=values["ce_subject"],
            content_type=content_type,
            **{attr: values.get(header) for header, attr in _OPTIONAL.items()},
        )


def new_envelope(
    institution: str,
    system: str,
    event_type: str,
    subject: str,
    *,
    event_id: str | None = None,
    correlation_id: str | None = None,
    time: dt.datetime | None = None,
) -> Envelope:
    """A fresh envelope: new UUID (unless given), time now (UTC)."""
    return Envelope(
        id=event_id or str(uuid.uuid4()),
        source=source_for(institution, system),
        type=event_type,
        time=format_time(time or dt.datetime.now(dt.UTC)),
        subject=subject,
        correlation_id=correlation_id,
    )
