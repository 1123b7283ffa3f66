"""W3C Trace Context on bus records: which headers carry it, reading and making them.

Two pairs of headers, as the CloudEvents distributed-tracing extension asks:

- ``ce_traceparent`` / ``ce_tracestate`` (the extension's attributes in Kafka binary mode):
  the context the event was *created* in, the gateway's span or the publishing system's.
  Set once, by the first hop, and copied unchanged by every later one (the extension "MUST
  carry the trace information of the starting trace of the transmission", not each hop's).
- ``traceparent`` / ``tracestate`` (the protocol's own headers, as OpenTelemetry's Kafka
  instrumentations write them, and W3C's on HTTP): the context of the hop that wrote the
  record. Each process (gateway, worker, sink) is one hop: a child span with the same
  trace id and a new parent id.

The trace headers are **not signed**: :func:`streams.contract.signing.canonical_bytes`
covers id, source, type, time and the payload only. That is right for diagnostics: each hop
must rewrite ``traceparent``, a changed trace id changes nothing the bus decides, and a
publisher's tracing setup cannot break its signatures.

Parsing here is the W3C grammar (version ``00`` exactly; a later version's extra fields
ignored; ``ff``, all-zero ids and upper-case hex refused), the same that OpenTelemetry's
``TraceContextTextMapPropagator`` accepts (tests/unit/test_tracecontext.py holds the two
side by side): under 1 µs a value where OpenTelemetry's propagator, building its context
objects, takes 3 to 5.
Something that is not a trace context is simply no trace context: a new trace starts, and
nothing is ever refused for it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
CE_TRACEPARENT = "ce_traceparent"
CE_TRACESTATE = "ce_tracestate"
#: Every trace header a hop replaces on what it writes.
TRACE_HEADERS = frozenset({TRACEPARENT, TRACESTATE, CE_TRACEPARENT, CE_TRACESTATE})
SAMPLED = 0x01
# W3C: at most 512 characters of tracestate are propagated (32 members).
MAX_TRACESTATE = 512
_MAX_TRACEPARENT = 512
_TRACEPARENT = re.compile(
    r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)\Z"
)
# Printable ASCII (W3C's tracestate alphabet), kept as is; anything else is dropped.
_TRACESTATE = re.compile(r"[\x20-\x7e]*\Z")

Headers = Iterable[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class TraceParent:
    """One span's place in a trace: trace id, span (parent) id, flags, and the tracestate."""

    trace_id: int
    span_id: int
    flags: int = SAMPLED
    state: str = ""

    @classmethod
    def parse(cls, traceparent: str | bytes | None, tracestate: str | bytes | None = None) -> (
        TraceParent | None
    ):  # fmt: skip
        """The context a ``traceparent`` (and ``tracestate``) value names, or None when it
        is missing or not a W3C traceparent. A tracestate that is not printable ASCII, or
        longer than 512 characters, is dropped (the traceparent still counts)."""
        text = _text(traceparent)
        if not text or len(text) > _MAX_TRACEPARENT:
            return None
        match = _TRACEPARENT.match(text)
        if match is None:
            return None
        version, trace_id, span_id, flags, rest = match.groups()
        if version == "ff" or (version == "00" and rest):
            return None
        trace, span = int(trace_id, 16), int(span_id, 16)
        if not trace or not span:
            return None
        state = (_text(tracestate) or "").strip(" \t")
        if len(state) > MAX_TRACESTATE or not _TRACESTATE.match(state):
            state = ""
        return cls(trace, span, int(flags, 16), state)

    @classmethod
    def new(cls) -> TraceParent:
        """The root of a new trace (sampled: a process that exports spans records it)."""
        return cls(_random_id(128), _random_id(64))

    def child(self) -> TraceParent:
        """The next hop: same trace id, flags and tracestate, a new span id."""
        return TraceParent(self.trace_id, _random_id(64), self.flags, self.state)

    @property
    def sampled(self) -> bool:
        """Whether the trace's sampled flag is set."""
        return bool(self.flags & SAMPLED)

    @property
    def trace_id_hex(self) -> str:
        """The trace id as 32 lower-case hex digits."""
        return f"{self.trace_id:032x}"

    def header(self) -> str:
        """The ``traceparent`` value (version 00)."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"

    def headers(self, creation: bool = False) -> list[tuple[str, bytes]]:
        """This context as Kafka headers: ``traceparent``/``tracestate`` (the hop), or with
        ``creation`` the extension's ``ce_traceparent``/``ce_tracestate``."""
        names = (CE_TRACEPARENT, CE_TRACESTATE) if creation else (TRACEPARENT, TRACESTATE)
        found = [(names[0], self.header().encode())]
        if self.state:
            found.append((names[1], self.state.encode()))
        return found


def _text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value


def _random_id(bits: int) -> int:
    # Random, never zero (invalid), as OpenTelemetry's RandomIdGenerator makes them: an id
    # guards nothing, and the secrets module's would cost 30 times as much per event.
    while not (found := random.getrandbits(bits)):
        pass  # pragma: no cover - one chance in 2**64
    return found


def contexts(headers: Headers) -> tuple[TraceParent | None, TraceParent | None]:
    """What a Kafka record says of its trace, in one pass over its headers: the context of
    the hop that wrote it (``traceparent``) and the event's creation context
    (``ce_traceparent``); each None when absent or not a traceparent."""
    found: dict[str, bytes] = {}
    for name, value in headers:
        if name in TRACE_HEADERS and name not in found:  # the first occurrence counts
            found[name] = value
    if not found:
        return None, None
    hop = TraceParent.parse(found.get(TRACEPARENT), found.get(TRACESTATE))
    if (found.get(CE_TRACEPARENT), found.get(CE_TRACESTATE)) == (
        found.get(TRACEPARENT),
        found.get(TRACESTATE),
    ):  # a first hop writes both alike: read once
        return hop, hop
    return hop, TraceParent.parse(found.get(CE_TRACEPARENT), found.get(CE_TRACESTATE))


def trace_headers(hop: TraceParent, creation: TraceParent) -> tuple[tuple[str, bytes], ...]:
    """What a hop writes on a record: the event's creation context and its own."""
    return (*creation.headers(creation=True), *hop.headers())


def retraced(
    headers: Iterable[tuple[str, bytes]], trace: tuple[tuple[str, bytes], ...]
) -> tuple[tuple[str, bytes], ...]:
    """``headers`` with ``trace`` (:func:`trace_headers`) in place of the trace headers they
    had (the other headers kept, in order)."""
    return (*(pair for pair in headers if pair[0] not in TRACE_HEADERS), *trace)
