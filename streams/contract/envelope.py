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

from streams.contract.reasons import EventError, Reason
from streams.contract.signing import PrivateKey, sign_event

SPEC_VERSION = "1.0"
_SPEC_VERSION_BYTES = SPEC_VERSION.encode()
CONTENT_TYPE = "application/avro"
JSON_CONTENT_TYPE = "application/json"
#: Put first by the consumer on a record whose header names it could not read as sent.
UNREADABLE_HEADER = "esb_unreadable"

_SOURCE = re.compile(
    r"^/institutions/(?P<institution>[a-z][a-z0-9-]*)/systems/(?P<system>[^/\s]+)$"
)
_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject")
_OPTIONAL = {
    "ce_correlationid": "correlation_id",
    "ce_sigkeyid": "sig_key_id",
    "ce_signature": "signature",
}

_ENVELOPE_HEADERS = (*_REQUIRED, *_OPTIONAL, "content-type")
_ENVELOPE_NAMES = frozenset(_ENVELOPE_HEADERS)
# A UUID in its canonical 8-4-4-4-12 form (what str(uuid.uuid4()) gives), either case.
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")

Headers = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]


def source_for(institution: str, system: str) -> str:
    """The ``ce_source`` of ``system`` at ``institution``."""
    return f"/institutions/{institution}/systems/{system}"


def parse_source(source: str) -> tuple[str, str] | None:
    """The (institution, system) a ``ce_source`` names, or None if it is not of that form."""
    match = _SOURCE.match(source)
    return (match["institution"], match["system"]) if match else None


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-27T08:15:00.123Z``."""
    if moment.tzinfo is not dt.UTC:
        moment = moment.astimezone(dt.UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


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
        parsed = parse_source(self.source)
        return parsed[0] if parsed else ""

    @property
    def system(self) -> str:
        """The publishing system, from ``ce_source``."""
        parsed = parse_source(self.source)
        return parsed[1] if parsed else ""

    def signed(self, key_id: str, signature: str) -> Envelope:
        """A copy carrying ``key_id`` and ``signature``."""
        return replace(self, sig_key_id=key_id, signature=signature)

    def signature_by(self, key: PrivateKey, payload: bytes) -> str:
        """``key``'s signature of this event with ``payload``: over the canonical bytes of
        id, source, type, time and the payload (:func:`~streams.contract.signing.sign_event`)."""
        return sign_event(key, self.id, self.source, self.type, self.time, payload)

    def sealed(self, key_id: str, key: PrivateKey, payload: bytes) -> Envelope:
        """A copy signed by ``key`` (named ``key_id``) with ``payload``."""
        return self.signed(key_id, self.signature_by(key, payload))

    def to_headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers in CloudEvents Kafka binary mode."""
        return self.signed_headers(self.sig_key_id, self.signature)

    def signed_headers(
        self, key_id: str | None, signature: str | None, content_type: str | None = None
    ) -> list[tuple[str, bytes]]:
        """The headers of this envelope signed by ``key_id`` (and with ``content_type``),
        without making that copy: the pipeline does this for every delivery."""
        headers = [
            ("ce_specversion", _SPEC_VERSION_BYTES),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_time", self.time.encode()),
            ("ce_subject", self.subject.encode()),
            ("content-type", (content_type or self.content_type).encode()),
        ]
        if self.correlation_id is not None:
            headers.append(("ce_correlationid", self.correlation_id.encode()))
        if key_id is not None:
            headers.append(("ce_sigkeyid", key_id.encode()))
        if signature is not None:
            headers.append(("ce_signature", signature.encode()))
        return headers

    @classmethod
    def from_headers(cls, headers: Headers, accept: tuple[str, ...] = (CONTENT_TYPE,)) -> Envelope:
        """Read and check the envelope; raise :class:`EventError` with the reason.

        The first occurrence of a header counts; values must be UTF-8. ``accept`` lists the
        content types allowed (publishers: Avro only).
        """
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        first: dict[str, bytes | str] = {}  # the first occurrence of each envelope header
        for name, raw in pairs:
            if raw is not None and name in _ENVELOPE_NAMES and name not in first:
                first[name] = raw
        values: dict[str, str] = {}
        for name in _ENVELOPE_HEADERS:  # only the envelope's own headers are read
            raw = first.get(name)
            if raw is None:
                continue
            try:
                if isinstance(raw, bytes):
                    values[name] = raw.decode("utf-8")  # strict: never a lone surrogate
                else:
                    raw.encode("utf-8")  # text given as str: a lone surrogate is not Unicode
                    values[name] = raw
            except UnicodeError:
                raise EventError(Reason.INVALID_HEADER, f"{name} is not valid UTF-8") from None
        missing = [name for name in _REQUIRED if not values.get(name)]
        if missing:
            raise EventError(Reason.MISSING_HEADER, f"missing {', '.join(missing)}")
        if values["ce_specversion"] != SPEC_VERSION:
            raise EventError(
                Reason.INVALID_HEADER,
                f"ce_specversion is {values['ce_specversion']!r}, expected {SPEC_VERSION!r}",
            )
        if not _UUID.match(values["ce_id"]):
            raise EventError(Reason.INVALID_HEADER, "ce_id is not a UUID")
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
