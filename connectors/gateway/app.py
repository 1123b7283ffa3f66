"""The HTTP gateway: legacy systems publish to the bus over HTTP.

Routes: ``POST /oauth/token`` (OAuth2 client credentials), ``POST /v1/events`` (CloudEvents,
structured or binary JSON), ``POST /engine/esb/push-request`` (the GovESB push format, the
institution's ECDSA signature verified over the exact ``data`` bytes), ``GET /health``,
``GET /metrics``, ``GET /openapi.json``. JSON is validated against the Avro schema and
encoded; the event goes to ``esb.ingress.<institution>`` signed by the bus (the institution's
own credentials and signature were checked here), and the reply comes only after the broker
acknowledged it (acks=all, idempotent producer). Bodies must be strict JSON (UTF-8, no
duplicate keys, no lone surrogates): what the gateway accepts, the pipeline accepts. Errors
are JSON with a code and a message; no stack trace ever leaves the process, and the log has
one line per request without headers or bodies.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import BrokerResponseError, KafkaError
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from connectors.gateway.auth import Authenticator
from connectors.gateway.errors import HttpError
from connectors.gateway.govesb import (
    GOVESB_NAMESPACE,
    ReplayWindow,
    UnportableReply,
    declares_latin1,
    push_identity,
    read_request,
    reply_text,
    signed_reply,
    token_in_data,
    without_token,
)
from connectors.gateway.openapi import OPENAPI
from connectors.gateway.strict_json import is_text, parse_strict
from streams import health
from streams.contract import topics
from streams.contract.catalog import Catalog, EventType
from streams.contract.codec import RegistryUnavailableError, SchemaStore, encode, schema_errors
from streams.contract.envelope import new_envelope, parse_source, source_for
from streams.contract.jsonavro import JsonAvroError, from_json
from streams.contract.signing import PrivateKey
from streams.contract.tracecontext import TRACEPARENT, TRACESTATE, TraceParent
from streams.pipeline.validation import VIA_GATEWAY, VIA_HEADER
from streams.registry.view import RegistryView
from streams.tracing import SpanKind, Tracing

CLOUDEVENT_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "correlationid")

log = logging.getLogger(__name__)


class GatewayMetrics:
    """Gateway metrics; names start with ``govesb_gateway_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "govesb_gateway_requests", "Requests by route and status.", ["route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.live_tokens = Gauge(
            "govesb_gateway_live_tokens", "Access tokens this process issued, not yet expired.",
            registry=self.registry,
        )  # fmt: skip
        self.produce_latency = Histogram(
            "govesb_gateway_produce_seconds", "From encoding to the broker's acknowledgement.",
            registry=self.registry,
        )  # fmt: skip


@dataclass
class Gateway:
    """State and handlers of the gateway."""

    view: RegistryView
    catalog: Catalog
    schemas: SchemaStore
    producer: AIOKafkaProducer
    bus_key: PrivateKey
    bus_key_id: str
    auth: Authenticator
    max_body_bytes: int = 1_000_000
    produce_timeout_s: float = 10.0
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    # Routes and /health checks added by other parts (connectors.gateway.requests.attach).
    route_installers: list[Callable[[web.Application], None]] = field(default_factory=list)
    checks: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    tracing: Tracing = field(default_factory=Tracing)
    _seen_signatures: ReplayWindow = field(default_factory=ReplayWindow)

    def __post_init__(self) -> None:
        self.metrics.live_tokens.set_function(lambda: self.auth.live_tokens)

    # ----------------------------------------------------------------- publishing

    def event_type_for(self, institution: str, name: str) -> EventType:
        """The catalogue entry ``name`` that ``institution`` may publish."""
        event_type = self.catalog.get(name)
        registered = self.view.event_types.get(name)
        if event_type is None or registered is None:
            raise HttpError(404, "unknown_type", f"unknown event type {name!r}")
        if registered.owner != institution:
            raise HttpError(403, "not_owner", f"{name} is owned by {registered.owner}")
        return event_type

    async def publish(
        self,
        institution: str,
        system: str,
        event_type: EventType,
        data: Any,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        data_field: str = "data",
        trace: Mapping[str, str] | None = None,
        created_in: TraceParent | None = None,
    ) -> str:
        """Validate JSON against the schema, encode, sign, produce; return the event id.

        ``data_field`` names where ``data`` was in the request, for the refusal of none.
        ``trace`` is the request's headers: the event's trace continues its ``traceparent``
        (a new one starts when it has none, or none the gateway can read: never a refusal).
        ``created_in`` is the event's own trace extension, when the client sent one; else the
        gateway's span is where the event was created.
        """
        parent = TraceParent.parse(trace.get(TRACEPARENT), trace.get(TRACESTATE)) if trace else None
        hop = self.tracing.start(
            f"publish {event_type.name}", parent, SpanKind.SERVER,
            {"cloudevents.event_type": event_type.name, "govesb.publisher": institution},
            creation=created_in,
        )  # fmt: skip
        try:
            published = await self._publish(
                institution, system, event_type, data, hop.context, created_in or hop.context,
                event_id=event_id, correlation_id=correlation_id, data_field=data_field,
            )  # fmt: skip
        except HttpError as error:
            hop.set({"http.response.status_code": error.status})
            hop.end(error=error.code)
            raise
        except BaseException as error:
            hop.end(error=type(error).__name__)
            raise
        hop.set({"cloudevents.event_id": published, "http.response.status_code": 202})
        hop.end()
        return published

    async def _publish(
        self,
        institution: str,
        system: str,
        event_type: EventType,
        data: Any,
        hop: TraceParent,
        creation: TraceParent,
        *,
        event_id: str | None,
        correlation_id: str | None,
        data_field: str,
    ) -> str:
        if data is None:
            raise HttpError(400, "invalid_data", f"{data_field} is required", field=data_field)
        try:
            record = from_json(event_type.schema, data)
            errors = schema_errors(record, event_type.parsed)
        except JsonAvroError as error:
            raise HttpError(400, "invalid_data", str(error), field=error.path) from None
        except (ValueError, TypeError) as error:
            raise HttpError(
                400,
                "invalid_data",
                f"data does not match {event_type.name}: {type(error).__name__}",
            ) from None
        if errors is not None:
            first = errors[0] if errors else None
            where = str(getattr(first, "field", "") or event_type.name)
            expected = getattr(first, "schema", "the schema")
            raise HttpError(400, "invalid_data", f"{where}: expected {expected}", field=where)
        if not isinstance(record, dict) or not record.get(event_type.key):
            # The key becomes ce_subject, which the pipeline requires to be non-empty.
            raise HttpError(
                400, "invalid_data", f"key field {event_type.key!r} missing or empty",
                field=event_type.key,
            )  # fmt: skip
        try:
            schema_id = await self.schemas.id_for(event_type)
        except (RegistryUnavailableError, LookupError) as error:
            raise HttpError(503, "registry_unavailable", str(error).split(":")[0]) from None
        try:
            value = encode(schema_id, event_type.parsed, record)
        except (ValueError, TypeError, OverflowError) as error:  # validated, yet unencodable
            raise HttpError(
                400, "invalid_data",
                f"data cannot be encoded as {event_type.name}: {type(error).__name__}",
            ) from None  # fmt: skip
        if len(value) > self.max_body_bytes:
            raise HttpError(413, "too_large", "the encoded event is over the size limit")
        envelope = new_envelope(
            institution, system, event_type.name, record[event_type.key],
            event_id=event_id, correlation_id=correlation_id,
        )  # fmt: skip
        envelope = envelope.sealed(self.bus_key_id, self.bus_key, value)
        started = time.monotonic()
        try:
            await asyncio.wait_for(
                self.producer.send_and_wait(
                    topics.ingress(institution),
                    value,
                    key=envelope.subject.encode(),
                    headers=[
                        *envelope.to_headers(),
                        (VIA_HEADER, VIA_GATEWAY),
                        *creation.headers(creation=True),
                        *hop.headers(),
                    ],
                ),
                self.produce_timeout_s,
            )
        except BrokerResponseError as error:
            if error.retriable:  # (the idempotent producer retries these itself)
                raise self._unacknowledged(error, envelope.id) from None
            # Refused for good (too large for the broker, not authorised, ...): nothing of
            # it is on the bus, and sending it again cannot help until an operator acts.
            log.warning("the broker refused an event for %s: %s", institution, error.message)
            raise HttpError(
                502, "broker_refused", f"the bus refused the event ({type(error).__name__})"
            ) from None
        except (KafkaError, TimeoutError) as error:
            raise self._unacknowledged(error, envelope.id) from None
        self.metrics.produce_latency.observe(time.monotonic() - started)
        return envelope.id

    @staticmethod
    def _unacknowledged(error: Exception, event_id: str) -> HttpError:
        """503 for an event the broker did not acknowledge in time, with its id."""
        # The event may still reach the bus: a client resending with this id (or the same
        # signed GovESB push, whose id is derived from it) is de-duplicated by the pipeline
        # on the event id. An id the server assigned is only known from here.
        return HttpError(
            503,
            "broker_unavailable",
            f"the bus did not acknowledge in time ({type(error).__name__}); "
            "resend with the same id",
            retry_after=5,
            event_id=event_id,
        )

    # ----------------------------------------------------------------- routes

    async def token(self, request: web.Request) -> web.Response:
        """POST /oauth/token (form-encoded, as OAuth2 requires)."""
        if request.content_type != "application/x-www-form-urlencoded":
            raise HttpError(415, "unsupported_media_type", "send application/x-www-form-urlencoded")
        try:
            form = {k: str(v) for k, v in (await request.post()).items()}
        except (ValueError, LookupError):  # undecodable, or a charset Python does not know
            raise HttpError(400, "invalid_request", "the form body cannot be read") from None
        issued = await self.auth.issue_token(
            request.headers.get("Authorization"), form, request.remote or "?"
        )
        return web.json_response(issued)

    async def events(self, request: web.Request) -> web.Response:
        """POST /v1/events: CloudEvents structured or binary mode, JSON data."""
        institution = await self.auth.institution_of(request.headers, request.remote or "?")
        content_type = request.content_type
        if content_type not in ("application/cloudevents+json", "application/json"):
            raise HttpError(
                415,
                "unsupported_media_type",
                "send application/cloudevents+json or application/json with ce-* headers",
            )
        raw = await self._body(request)
        attributes: dict[str, Any]
        if content_type == "application/cloudevents+json":
            event = parse_strict(raw)
            if not isinstance(event, dict):
                raise HttpError(400, "invalid_event", "a CloudEvent must be a JSON object")
            attributes = {name: event.get(name) for name in CLOUDEVENT_ATTRIBUTES}
            data = event.get("data")
            extension = (event.get(TRACEPARENT), event.get(TRACESTATE))
        else:
            attributes = {name: request.headers.get(f"ce-{name}") for name in CLOUDEVENT_ATTRIBUTES}
            data = parse_strict(raw)
            headers = request.headers
            extension = (headers.get("ce-traceparent"), headers.get("ce-tracestate"))
        for name, value in attributes.items():
            # Header values aiohttp could not decode as UTF-8 arrive with lone surrogates.
            if value is not None and not is_text(value):
                raise HttpError(400, "invalid_event", f"{name} must be a UTF-8 string", field=name)
        if attributes["specversion"] != "1.0":
            raise HttpError(400, "invalid_event", "specversion must be 1.0", field="specversion")
        if not attributes["type"]:
            raise HttpError(400, "invalid_event", "type is required", field="type")
        system = system_of(attributes["source"] or "", institution)
        event_id = attributes["id"]
        if event_id is not None:
            try:
                event_id = str(uuid.UUID(event_id))
            except ValueError:
                raise HttpError(400, "invalid_event", "id must be a UUID", field="id") from None
        event_type = self.event_type_for(institution, attributes["type"])
        published = await self.publish(
            institution, system, event_type, data, event_id=event_id,
            correlation_id=attributes["correlationid"] or None,
            trace=request.headers, created_in=TraceParent.parse(*map(_text_or_none, extension)),
        )  # fmt: skip
        return web.json_response({"id": published, "status": "accepted"}, status=202)

    async def push(self, request: web.Request) -> web.Response:
        """POST /engine/esb/push-request: the GovESB push format.

        The signature covers the exact bytes of ``data`` as sent (ISO-8859-1 bodies: their
        UTF-8 form, see ``govesb.read_request``); what is published is ``esbBody`` of those
        bytes parsed, never another copy of ``data`` elsewhere in the body, and never the
        token a client put inside the data. A push is identified by its signature's ``r``
        and the data bytes, so the same push with its signature re-encoded (another base64
        or DER form, or ``s`` replaced by ``n - s``) is a replay too.
        """
        institution = await self.auth.institution_of(
            request.headers, request.remote or "?", raw_token=True
        )
        latin1 = declares_latin1(request.charset)
        if request.content_type != "application/json" and not (
            request.content_type == "text/plain" and latin1  # Apache's StringEntity default
        ):
            raise HttpError(415, "unsupported_media_type", "send application/json")
        signed = read_request(await self._body(request), request.charset)
        own_keys = [
            self.view.keyring.get(key_id)
            for key_id, owner in self.view.key_owners.items()
            if owner == institution  # key_owners holds only keys that are not revoked
        ]
        if not any(key and key.verify(signed.data_bytes, signed.signature) for key in own_keys):
            raise signed.unverified()
        token = token_in_data(signed.data)
        if token is not None and self.auth.token_owner(token) != institution:
            raise HttpError(
                401, "invalid_token", "data.authorization is no live token of the caller"
            )
        data = without_token(signed.data)
        identity = push_identity(signed.data_bytes, signed.signature)
        if self._seen_signatures.seen(identity, time.monotonic()):
            raise HttpError(409, "replayed", "this signed request was already accepted")
        push_code = data.get("pushCode") if isinstance(data, dict) else None
        if not push_code or not isinstance(push_code, str):
            raise HttpError(
                400, "invalid_request", "data.pushCode is required", field="data.pushCode"
            )
        event_type = self.event_type_for(institution, push_code)
        request_id = data.get("requestId")
        try:  # echoed in the signed reply: checked before anything is published
            reply_text({"requestId": request_id})
        except UnportableReply as error:
            raise HttpError(400, "invalid_request", str(error), field="data.requestId") from None
        event_id = str(uuid.uuid5(GOVESB_NAMESPACE, identity))
        # Held while publishing, so the same push sent concurrently is a replay too; released
        # if publishing fails, so the client may send it again.
        self._seen_signatures.add(identity, time.monotonic())
        try:
            published = await self.publish(
                institution, "govesb-push", event_type, data.get("esbBody"),
                event_id=event_id, data_field="data.esbBody", trace=request.headers,
            )  # fmt: skip
        except BaseException:
            self._seen_signatures.discard(identity)
            raise
        ack = {"success": True, "requestId": request_id, "esbBody": {"eventId": published}}
        return web.Response(
            text=signed_reply(ack, self.bus_key), status=202, content_type="application/json"
        )

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise HttpError(413, "too_large", f"the body is over {self.max_body_bytes} bytes")
        # StreamReader.read(n) returns what is buffered, up to n: read until the end.
        body = bytearray()
        while chunk := await request.content.read(self.max_body_bytes + 1 - len(body)):
            body += chunk
            if len(body) > self.max_body_bytes:
                raise HttpError(413, "too_large", f"the body is over {self.max_body_bytes} bytes")
        return bytes(body)

    def application(self) -> web.Application:
        """The aiohttp application with every route and the error middleware."""
        metrics = self.metrics

        @web.middleware
        async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
            route = (
                request.match_info.route.resource.canonical
                if request.match_info.route.resource
                else "?"
            )
            try:
                response: web.StreamResponse = await handler(request)
            except HttpError as error:
                response = error.response()
            except web.HTTPException as error:
                kept = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
                response = web.json_response(
                    {"error": "http", "message": error.reason}, status=error.status, headers=kept
                )
            except Exception:  # never a stack trace to the client
                log.exception("unexpected failure on %s %s", request.method, route)
                response = web.json_response(
                    {"error": "internal", "message": "internal error"}, status=500
                )
            metrics.requests.labels(route, str(response.status)).inc()
            return response

        app = web.Application(middlewares=[errors], client_max_size=self.max_body_bytes * 2)
        app.router.add_post("/oauth/token", self.token)
        app.router.add_post("/v1/events", self.events)
        app.router.add_post("/engine/esb/push-request", self.push)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/openapi.json", _openapi)
        for install in self.route_installers:
            install(app)
        return app

    async def health(self, _: web.Request) -> web.Response:
        """Per-component checks."""
        status, body = health.report(
            {
                "registry_view": health.registry_view_check(self.view),
                "clients": {"ok": bool(self.auth.clients), "count": len(self.auth.clients)},
                **{name: check() for name, check in self.checks.items()},
            }
        )
        return web.json_response(body, status=status)

    async def metrics_page(self, _: web.Request) -> web.Response:
        """Prometheus text."""
        text, content_type = health.metrics_text(self.metrics.registry)
        return web.Response(body=text, headers={"Content-Type": content_type})


def _text_or_none(value: Any) -> str | None:
    """A CloudEvent attribute that must be text: anything else is not there."""
    return value if isinstance(value, str) else None


async def _openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def system_of(source: str, institution: str) -> str:
    if not source:
        return "gateway"
    own = source_for(institution, "")
    parsed = parse_source(source)
    if parsed is not None and parsed[0] == institution:
        return parsed[1]
    if parsed is None and source.startswith(own):  # ours, but the pipeline could not read it
        raise HttpError(
            400, "invalid_event", f"source must be {own}<system>, a system without / or spaces",
            field="source",
        )  # fmt: skip
    raise HttpError(
        403,
        "source_mismatch",
        f"source must be {source_for(institution, '<system>')}",
        field="source",
    )
