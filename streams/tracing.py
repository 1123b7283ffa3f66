"""One process's part in every event's trace: a hop each, and its span when they are exported.

Every process that handles an event (gateway, worker, HTTP sink) is one hop of its trace: it
reads the incoming W3C context (:mod:`streams.contract.tracecontext`), becomes its child (same
trace id, a new parent id) and writes that on whatever it sends on.

Without ``tracing.otlp_endpoint`` that is all: the OpenTelemetry SDK is not even imported and
no span object is made, a hop costs its new ids and the copied headers. With it, each hop is
an OpenTelemetry span of the process's service (``govesb-gateway``, ``govesb-worker``,
``govesb-sink``), the child of the incoming context and linked to the event's creation context
when that is another, exported over OTLP/HTTP (protobuf) in batches by the SDK's
``BatchSpanProcessor`` on its own thread, so the event loop never waits for the collector; a
collector that is down costs dropped spans, never an event. The sampler follows the parent's
sampled flag (a new trace is sampled).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from streams.contract.tracecontext import TraceParent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from streams.settings import TracingSettings

__all__ = ["Hop", "SpanKind", "Tracing", "remote"]

GATEWAY, WORKER, SINK = "govesb-gateway", "govesb-worker", "govesb-sink"
Attributes = Mapping[str, str | int | bool]

# Both quote header values that came from outside (a malformed tracestate member) at WARNING
# on every such request; a bad trace header is ignored here by design, not news for the log.
for _name in ("opentelemetry.trace.span", "opentelemetry.trace.propagation.tracecontext"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class Hop:
    """This process's context for one event, and its span when spans are exported."""

    __slots__ = ("context", "span")

    def __init__(self, context: TraceParent, span: Span | None = None) -> None:
        self.context = context
        self.span = span

    def set(self, attributes: Attributes) -> None:
        """Add ``attributes`` to the span (nothing without one)."""
        if self.span is not None:
            self.span.set_attributes(attributes)

    def end(self, error: str | None = None) -> None:
        """End the span; ``error`` marks it failed, with that description."""
        if self.span is not None:
            if error is not None:
                self.span.set_status(Status(StatusCode.ERROR, error))
            self.span.end()


class Tracing:
    """The hops of one process, and the exporter of their spans when one is configured."""

    def __init__(self, settings: TracingSettings | None = None, service: str = "govesb") -> None:
        self.service = service
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        if settings is not None and settings.otlp_endpoint:
            self._provider = _provider(settings, service)
            self._tracer = self._provider.get_tracer("govesb")

    @property
    def exporting(self) -> bool:
        """Whether spans are recorded and exported."""
        return self._tracer is not None

    def start(
        self,
        name: str,
        parent: TraceParent | None,
        kind: SpanKind,
        attributes: Attributes | None = None,
        creation: TraceParent | None = None,
    ) -> Hop:
        """This process's hop: the child of ``parent`` (a new trace when None), its span
        started when spans are exported (end it with :meth:`Hop.end`)."""
        if self._tracer is None:
            return Hop(parent.child() if parent is not None else TraceParent.new())
        context = Context() if parent is None else set_span_in_context(remote(parent))
        links = (
            [Link(remote(creation).get_span_context())]
            if creation is not None and creation != parent
            else None
        )
        span = self._tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, links=links
        )
        own = span.get_span_context()
        state = parent.state if parent is not None else ""
        return Hop(TraceParent(own.trace_id, own.span_id, int(own.trace_flags), state), span)

    def shutdown(self) -> None:
        """Export what is buffered (bounded by the export timeout) and stop the exporter;
        blocking (run it in a thread from the event loop)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = self._tracer = None


def remote(context: TraceParent) -> NonRecordingSpan:
    """``context`` as OpenTelemetry's span of another process (a parent to start spans in)."""
    return NonRecordingSpan(
        SpanContext(
            context.trace_id,
            context.span_id,
            is_remote=True,
            trace_flags=TraceFlags(context.flags),
            trace_state=TraceState.from_header([context.state]) if context.state else None,
        )
    )


def _provider(settings: TracingSettings, service: str) -> Any:
    # Imported only when spans are exported: a process without an endpoint never loads them.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    provider = TracerProvider(
        resource=Resource({SERVICE_NAME: service}),
        sampler=ParentBased(ALWAYS_ON),
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=settings.export_timeout_s),
            schedule_delay_millis=settings.export_interval_s * 1000,
            export_timeout_millis=settings.export_timeout_s * 1000,
        )
    )
    return provider
