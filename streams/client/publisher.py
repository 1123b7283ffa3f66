"""Publisher SDK: how an institution's system puts a signed event on the bus.

    async with Publisher.connect(institution="nida", system="crvs", key_id=..., key=...,
                                 kafka=settings.kafka, schema_registry=settings.schema_registry)
        as publisher:
        event_id = await publisher.publish("tz.go.nida.CitizenRegistered", citizen)

``publish`` validates the payload against the catalogue schema, encodes it in the Confluent
wire format, signs it, sends it to ``esb.ingress.<institution>`` (acks=all, idempotent
producer) and returns the event id only after the broker acknowledged it. Retrying with the
same ``event_id`` keeps the event's identity.

Each event carries its trace context (W3C ``traceparent`` as ``ce_traceparent`` and
``traceparent``): that of the span current in the calling system's OpenTelemetry context (a
``send`` span of its own when that system records spans), or of the ``traceparent`` given,
or else a new trace. The bus's processes continue it; the trace headers are not signed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, set_span_in_context

from streams.client.lifecycle import Lifecycle
from streams.contract import topics
from streams.contract.catalog import Catalog, EventType
from streams.contract.codec import SchemaStore, encode, schema_errors
from streams.contract.envelope import Envelope, new_envelope
from streams.contract.signing import PrivateKey
from streams.contract.tracecontext import TraceParent
from streams.settings import DEFAULT_CATALOG, KafkaSettings, SchemaRegistrySettings
from streams.tracing import remote

MAX_PAYLOAD_BYTES = 1_000_000
# The OpenTelemetry API only: spans are recorded when the calling system set up an SDK.
_TRACER = trace.get_tracer(__name__)


class PublishError(ValueError):
    """The event cannot be published as given; the message says why (no secrets in it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedEvent:
    """An event ready to send: Kafka key, value and headers, and its envelope."""

    topic: str
    key: bytes
    value: bytes
    envelope: Envelope
    trace: TraceParent | None = None

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers (CloudEvents binary mode), with the trace context: the event is
        created in it and this is its first hop, so both pairs carry the same."""
        headers = self.envelope.to_headers()
        if self.trace is not None:
            headers += [*self.trace.headers(creation=True), *self.trace.headers()]
        return headers


def _as_record(payload: Mapping[str, Any] | Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return dataclasses.asdict(payload)
    if isinstance(payload, Mapping):
        return dict(payload)
    raise PublishError(f"payload must be a mapping or a dataclass, not {type(payload).__name__}")


def publishable(catalog: Catalog, institution: str, name: str) -> EventType:
    """The catalogue entry for ``name``; :class:`PublishError` unless ``institution`` owns it."""
    event_type = catalog.get(name)
    if event_type is None:
        raise PublishError(f"unknown event type {name!r}; see schemas/catalog.yaml")
    if event_type.owner != institution:
        raise PublishError(
            f"{name} is owned by {event_type.owner}; {institution} may not publish it"
        )
    return event_type


def checked_record(event_type: EventType, payload: Mapping[str, Any] | Any) -> dict[str, Any]:
    """``payload`` as a record of ``event_type``'s schema; :class:`PublishError` naming the
    fields (never their values: they may be personal data) when it does not match."""
    record = _as_record(payload)
    try:
        errors = schema_errors(record, event_type.parsed)
    except (ValueError, TypeError) as error:  # fastavro's logical-type conversions
        raise PublishError(
            f"{event_type.name} payload does not match its schema "
            f"({type(error).__name__} in a date, time or decimal field)"
        ) from None
    if errors is not None:
        # Name the field and the expected type, never the value: it may be personal data.
        problems = "; ".join(
            f"{e.field}: expected {e.schema}, got {type(e.datum).__name__}" for e in errors
        )
        raise PublishError(
            f"{event_type.name} payload does not match its schema"
            + (f": {problems}" if problems else "")
        )
    return record


class Publisher(Lifecycle):
    """Publishes one institution system's events to its ingress topic."""

    def __init__(
        self,
        *,
        institution: str,
        system: str,
        key_id: str,
        key: PrivateKey,
        catalog: Catalog,
        schemas: SchemaStore,
        producer: AIOKafkaProducer,
    ) -> None:
        self.institution = institution
        self.system = system
        self.topic = topics.ingress(institution)
        self._key_id = key_id
        self._key = key
        self._catalog = catalog
        self._schemas = schemas
        self._producer = producer

    @classmethod
    def connect(
        cls,
        *,
        institution: str,
        system: str,
        key_id: str,
        key: PrivateKey,
        kafka: KafkaSettings,
        schema_registry: SchemaRegistrySettings,
        catalog: Catalog | None = None,
    ) -> Publisher:
        """A publisher with its own idempotent producer (acks=all) and registry client."""
        producer = AIOKafkaProducer(**kafka.durable_producer_options(linger_ms=5))
        return cls(
            institution=institution,
            system=system,
            key_id=key_id,
            key=key,
            catalog=catalog or Catalog.load(DEFAULT_CATALOG),
            schemas=SchemaStore(AsyncSchemaRegistryClient(schema_registry.client_config())),
            producer=producer,
        )

    async def start(self) -> None:
        """Connect the producer."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and close the producer."""
        await self._producer.stop()

    def event_type(self, name: str) -> EventType:
        """The catalogue entry for ``name`` if this institution may publish it."""
        return publishable(self._catalog, self.institution, name)

    def prepare(
        self,
        event_type: EventType,
        schema_id: int,
        payload: Mapping[str, Any] | Any,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        trace: TraceParent | None = None,
        subject: str | None = None,
    ) -> PreparedEvent:
        """Validate, encode and sign; no I/O. ``trace``: the context the event is created in;
        ``subject``: the event's subject and Kafka key (by default its business key field)."""
        record = checked_record(event_type, payload)
        business_key = subject if subject is not None else record.get(event_type.key)
        if not isinstance(business_key, str) or not business_key:
            raise PublishError(f"{event_type.name}: key field {event_type.key!r} must be set")
        value = encode(schema_id, event_type.parsed, record)
        if len(value) > MAX_PAYLOAD_BYTES:
            raise PublishError(f"payload is {len(value)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        envelope = new_envelope(
            self.institution,
            self.system,
            event_type.name,
            business_key,
            event_id=event_id,
            correlation_id=correlation_id,
        )
        sealed = envelope.sealed(self._key_id, self._key, value)
        return PreparedEvent(self.topic, business_key.encode(), value, sealed, trace)

    async def publish(
        self,
        event_type: str,
        payload: Mapping[str, Any] | Any,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> str:
        """Publish one event; return its id once the broker acknowledged it (acks=all).

        ``traceparent`` (and ``tracestate``): the W3C context to publish in, e.g. that of the
        request being served; by default the current OpenTelemetry context. One that is not
        a traceparent counts as none.
        """
        entry = self.event_type(event_type)
        try:
            schema_id = await self._schemas.id_for(entry)
        except LookupError as error:
            raise PublishError(str(error)) from None
        given = TraceParent.parse(traceparent, tracestate)
        with _TRACER.start_as_current_span(
            f"send {self.topic}",
            context=set_span_in_context(remote(given)) if given is not None else None,
            kind=SpanKind.PRODUCER,
        ) as span:
            event = self.prepare(
                entry, schema_id, payload, event_id=event_id, correlation_id=correlation_id,
                trace=_created_in(span, given),
            )  # fmt: skip
            span.set_attribute("cloudevents.event_id", event.envelope.id)
            await self._producer.send_and_wait(
                event.topic, event.value, key=event.key, headers=event.headers
            )
        return event.envelope.id


def _created_in(span: Span, given: TraceParent | None) -> TraceParent:
    """The context an event is created in: the span's own when it is recorded; else a child
    of whatever context is current (``given``, or the caller's); else a new trace."""
    own = span.get_span_context()
    if not own.is_valid:
        return TraceParent.new()
    state = own.trace_state.to_header() if own.trace_state else ""
    found = TraceParent(own.trace_id, own.span_id, int(own.trace_flags), state)
    return found if span.is_recording() else found.child()
