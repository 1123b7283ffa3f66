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
import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastavro.validation import ValidationError, validate
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from connectors.gateway.openapi import OPENAPI
from streams.contract import topics
from streams.contract.catalog import Catalog, EventType
from streams.contract.codec import RegistryUnavailableError, SchemaStore, encode
from streams.contract.envelope import new_envelope, parse_source, source_for
from streams.contract.jsonavro import JsonAvroError, from_json
from streams.contract.signing import PrivateKey, sign_event
from streams.registry.sync import RegistryView

GOVESB_NAMESPACE = uuid.UUID("6f1c2b1e-3c1a-4f7e-9b7d-0e2a6c9d4b11")
CLOUDEVENT_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "correlationid")

log = logging.getLogger(__name__)


class HttpError(Exception):
    """A refusal with its status, error code and message (and optional field path)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.retry_after = field, retry_after

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return web.json_response(body, status=self.status, headers=headers)


class GatewayMetrics:
    """Gateway metrics; names start with ``govesb_gateway_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "govesb_gateway_requests", "Requests by route and status.", ["route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.produce_latency = Histogram(
            "govesb_gateway_produce_seconds", "From encoding to the broker's acknowledgement.",
            registry=self.registry,
        )  # fmt: skip


@dataclass
class ReplayWindow:
    """Signed pushes accepted within ``window_s``, oldest first, pruned from the front.

    Each check costs O(1) amortised however many pushes the window holds; past
    ``max_entries`` the oldest are forgotten first.
    """

    window_s: float = 86_400.0
    max_entries: int = 1_000_000
    _accepted: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def seen(self, digest: str, now: float) -> bool:
        """Whether ``digest`` was accepted within the window."""
        while self._accepted:
            oldest_at = next(iter(self._accepted.values()))
            if now - oldest_at < self.window_s and len(self._accepted) < self.max_entries:
                break
            self._accepted.popitem(last=False)
        return digest in self._accepted

    def add(self, digest: str, now: float) -> None:
        """Remember ``digest`` as accepted at ``now``."""
        self._accepted[digest] = now

    def discard(self, digest: str) -> None:
        """Forget ``digest`` (its request failed, so the client may send it again)."""
        self._accepted.pop(digest, None)


@dataclass
class TokenBucket:
    """Per-institution rate limit: ``rate`` requests per second, bursts up to ``burst``."""

    rate: float
    burst: float
    tokens: float = 0.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """0 if allowed now, else seconds until the next request is allowed."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class Gateway:
    """State and handlers of the gateway."""

    view: RegistryView
    catalog: Catalog
    schemas: SchemaStore
    producer: AIOKafkaProducer
    bus_key: PrivateKey
    bus_key_id: str
    clients: dict[str, str]
    max_body_bytes: int = 1_000_000
    rate_per_s: float = 100.0
    burst: float = 200.0
    token_ttl_s: int = 3600
    produce_timeout_s: float = 10.0
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _seen_signatures: ReplayWindow = field(default_factory=ReplayWindow)

    # ----------------------------------------------------------------- auth and limits

    def issue_token(self, authorization: str | None, form: dict[str, str]) -> dict[str, Any]:
        """OAuth2 client credentials with HTTP Basic client authentication."""
        if form.get("grant_type") != "client_credentials":
            raise HttpError(400, "unsupported_grant_type", "grant_type must be client_credentials")
        client_id, client_secret = _basic_credentials(authorization)
        expected = self.clients.get(client_id)
        if expected is None or not _same_secret(expected, client_secret):
            raise HttpError(401, "invalid_client", "unknown client or wrong secret")
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (client_id, time.monotonic() + self.token_ttl_s)
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_ttl_s,
            "scope": f"publish:{client_id}",
        }

    def institution_of(self, request: web.Request) -> str:
        """The authenticated institution: bearer token (or X-API-Key = client secret)."""
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            found = self._tokens.get(header[7:].strip())
            if found is None:
                raise HttpError(401, "invalid_token", "unknown bearer token")
            institution, expires = found
            if time.monotonic() > expires:
                self._tokens.pop(header[7:].strip(), None)
                raise HttpError(401, "invalid_token", "the bearer token has expired")
        elif "X-API-Key" in request.headers:
            key = request.headers["X-API-Key"]
            matches = [c for c, s in self.clients.items() if _same_secret(s, key)]
            if not matches:
                raise HttpError(401, "invalid_api_key", "unknown API key")
            institution = matches[0]
        else:
            raise HttpError(401, "unauthenticated", "send Authorization: Bearer <token>")
        wait = self._buckets.setdefault(institution, TokenBucket(self.rate_per_s, self.burst)).take(
            time.monotonic()
        )
        if wait:
            raise HttpError(
                429, "rate_limited", "too many requests", retry_after=max(1, round(wait))
            )
        return institution

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
    ) -> str:
        """Validate JSON against the schema, encode, sign, produce; return the event id.

        ``data_field`` names where ``data`` was in the request, for the refusal of none.
        """
        if data is None:
            raise HttpError(400, "invalid_data", f"{data_field} is required", field=data_field)
        try:
            record = from_json(event_type.schema, data)
            validate(record, event_type.parsed, raise_errors=True)
        except JsonAvroError as error:
            raise HttpError(400, "invalid_data", str(error), field=error.path) from None
        except ValidationError as error:
            first = error.errors[0] if error.errors else None
            where = str(getattr(first, "field", "") or event_type.name)
            expected = getattr(first, "schema", "the schema")
            raise HttpError(
                400, "invalid_data", f"{where}: expected {expected}", field=where
            ) from None
        except (ValueError, TypeError) as error:
            raise HttpError(
                400,
                "invalid_data",
                f"data does not match {event_type.name}: {type(error).__name__}",
            ) from None
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
        signature = sign_event(
            self.bus_key, envelope.id, envelope.source, envelope.type, envelope.time, value
        )
        envelope = envelope.signed(self.bus_key_id, signature)
        started = time.monotonic()
        try:
            await asyncio.wait_for(
                self.producer.send_and_wait(
                    topics.ingress(institution),
                    value,
                    key=envelope.subject.encode(),
                    headers=[*envelope.to_headers(), ("esb_via", b"gateway")],
                ),
                self.produce_timeout_s,
            )
        except (KafkaError, TimeoutError) as error:
            # The event may still reach the bus: a client resending with the same id (or the
            # same signed GovESB push) is de-duplicated by the pipeline on the event id.
            raise HttpError(
                503,
                "broker_unavailable",
                f"the bus did not acknowledge in time ({type(error).__name__}); "
                "resend with the same id",
                retry_after=5,
            ) from None
        self.metrics.produce_latency.observe(time.monotonic() - started)
        return envelope.id

    # ----------------------------------------------------------------- routes

    async def token(self, request: web.Request) -> web.Response:
        """POST /oauth/token (form-encoded, as OAuth2 requires)."""
        if request.content_type != "application/x-www-form-urlencoded":
            raise HttpError(415, "unsupported_media_type", "send application/x-www-form-urlencoded")
        try:
            form = {k: str(v) for k, v in (await request.post()).items()}
        except (ValueError, LookupError):  # undecodable, or a charset Python does not know
            raise HttpError(400, "invalid_request", "the form body cannot be read") from None
        return web.json_response(self.issue_token(request.headers.get("Authorization"), form))

    async def events(self, request: web.Request) -> web.Response:
        """POST /v1/events: CloudEvents structured or binary mode, JSON data."""
        institution = self.institution_of(request)
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
            event = _json(raw)
            if not isinstance(event, dict):
                raise HttpError(400, "invalid_event", "a CloudEvent must be a JSON object")
            attributes = {name: event.get(name) for name in CLOUDEVENT_ATTRIBUTES}
            data = event.get("data")
        else:
            attributes = {name: request.headers.get(f"ce-{name}") for name in CLOUDEVENT_ATTRIBUTES}
            data = _json(raw)
        for name, value in attributes.items():
            # Header values aiohttp could not decode as UTF-8 arrive with lone surrogates.
            if value is not None and not _is_text(value):
                raise HttpError(400, "invalid_event", f"{name} must be a UTF-8 string", field=name)
        if attributes["specversion"] != "1.0":
            raise HttpError(400, "invalid_event", "specversion must be 1.0", field="specversion")
        if not attributes["type"]:
            raise HttpError(400, "invalid_event", "type is required", field="type")
        system = _system_of(attributes["source"] or "", institution)
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
        )  # fmt: skip
        return web.json_response({"id": published, "status": "accepted"}, status=202)

    async def push(self, request: web.Request) -> web.Response:
        """POST /engine/esb/push-request: the GovESB push format.

        The signature covers the exact bytes of ``data`` as sent; what is published is those
        bytes parsed, never another copy of ``data`` elsewhere in the body. A push is
        identified by its signature's ``r`` and the data bytes, so the same push with its
        signature re-encoded (another base64 or DER form, or ``s`` replaced by ``n - s``) is
        a replay too.
        """
        institution = self.institution_of(request)
        if request.content_type != "application/json":
            raise HttpError(415, "unsupported_media_type", "send application/json")
        raw = await self._body(request)
        document = _json(raw)  # UTF-8 JSON, no duplicate keys: 400 otherwise
        if not isinstance(document, dict) or "data" not in document or "signature" not in document:
            raise HttpError(400, "invalid_request", 'expected {"data": {...}, "signature": "..."}')
        signature = document["signature"]
        if not isinstance(signature, str):
            raise HttpError(
                400, "invalid_request", "signature must be a base64 string", field="signature"
            )
        data_text = _exact_data(raw.decode("utf-8"))
        data_bytes = data_text.encode()
        try:
            data = _json(data_bytes)
        except HttpError:
            data = _NOT_DATA
        if data != document["data"]:  # the cut is not the data member: nothing else is signed
            raise HttpError(
                400, "invalid_request", 'the body must be {"data":...,"signature":"..."}'
            )
        own_keys = [
            self.view.keyring.get(key_id)
            for key_id, owner in self.view.key_owners.items()
            if owner == institution  # key_owners holds only keys that are not revoked
        ]
        if not any(key and key.verify(data_bytes, signature) for key in own_keys):
            raise HttpError(
                401, "invalid_signature", "the signature does not verify over the data bytes"
            )
        identity = _push_identity(data_bytes, signature)
        if self._seen_signatures.seen(identity, time.monotonic()):
            raise HttpError(409, "replayed", "this signed request was already accepted")
        push_code = data.get("pushCode") if isinstance(data, dict) else None
        if not push_code or not isinstance(push_code, str):
            raise HttpError(
                400, "invalid_request", "data.pushCode is required", field="data.pushCode"
            )
        event_type = self.event_type_for(institution, push_code)
        event_id = str(uuid.uuid5(GOVESB_NAMESPACE, identity))
        # Held while publishing, so the same push sent concurrently is a replay too; released
        # if publishing fails, so the client may send it again.
        self._seen_signatures.add(identity, time.monotonic())
        try:
            published = await self.publish(
                institution, "govesb-push", event_type, data.get("esbBody"),
                event_id=event_id, data_field="data.esbBody",
            )  # fmt: skip
        except BaseException:
            self._seen_signatures.discard(identity)
            raise
        ack = json.dumps(
            {
                "success": True,
                "requestId": data.get("requestId"),
                "esbBody": {"eventId": published},
            },
            separators=(",", ":"),
        )
        body = f'{{"data":{ack},"signature":"{self.bus_key.sign(ack.encode())}"}}'
        return web.Response(text=body, status=202, content_type="application/json")

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
        return app

    async def health(self, _: web.Request) -> web.Response:
        """Per-component checks."""
        checks: dict[str, dict[str, Any]] = {
            "registry_view": {"ok": bool(self.view.event_types)},
            "clients": {"ok": bool(self.clients), "count": len(self.clients)},
        }
        ok = all(bool(c["ok"]) for c in checks.values())
        return web.json_response(
            {"status": "ok" if ok else "degraded", "checks": checks}, status=200 if ok else 503
        )

    async def metrics_page(self, _: web.Request) -> web.Response:
        """Prometheus text."""
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


async def _openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


_NOT_DATA = object()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        # Parsers disagree on which of two equal keys wins; a signed or validated body must
        # have one meaning only.
        raise ValueError("duplicate key")
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json(raw: bytes) -> Any:
    """The body as JSON (RFC 8259): UTF-8 without BOM, no duplicate keys, no NaN or
    Infinity, every string valid Unicode; 400 ``invalid_json`` otherwise."""
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
        # A "\ud800" escape parses to a lone surrogate, which no UTF-8 event can carry.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeError and JSONDecodeError are ValueErrors
        raise HttpError(
            400,
            "invalid_json",
            "the body is not valid JSON (UTF-8, no duplicate keys, no lone surrogates)",
        ) from None
    return value


def _is_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _same_secret(expected: str, given: str) -> bool:
    """Constant-time comparison; anything the client sent may hold non-ASCII characters."""
    return secrets.compare_digest(
        expected.encode("utf-8", "surrogateescape"), given.encode("utf-8", "surrogateescape")
    )


def _exact_data(text: str) -> str:
    """The raw text of the ``data`` member, as GovESB verifiers cut it: between ``"data":``
    and ``,"signature"``."""
    start = text.find('"data":')
    end = text.rfind(',"signature"')
    if start < 0 or end < start:
        raise HttpError(400, "invalid_request", 'the body must be {"data":...,"signature":"..."}')
    return text[start + len('"data":') : end].strip()


def _push_identity(data: bytes, signature: str) -> str:
    """What makes a signed push the same push: the data bytes and the signature's ``r``.

    The base64 text is not it: several texts decode to the same DER, and ``(r, n - s)``
    verifies as well as ``(r, s)``. ``r`` is fixed by the signer's nonce, so only the holder
    of the key can make another signature of the same data.
    """
    r, _ = decode_dss_signature(base64.b64decode(signature))  # it verified: well-formed
    return hashlib.sha256(data + b"\x00" + str(r).encode()).hexdigest()


def _system_of(source: str, institution: str) -> str:
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


def _basic_credentials(authorization: str | None) -> tuple[str, str]:
    if not authorization or not authorization.lower().startswith("basic "):
        raise HttpError(401, "invalid_client", "client authentication (HTTP Basic) is required")
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text
        raise HttpError(401, "invalid_client", "malformed Basic credentials") from None
    client_id, _, client_secret = decoded.partition(":")
    return client_id, client_secret


class AccessLog(AbstractAccessLogger):
    """One line per request: method, path, status, duration.

    Never headers, query strings or bodies: those carry tokens, secrets and personal data.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log ``request`` and the status it got."""
        self.logger.info("%s %s %d %.3fs", request.method, request.path, response.status, time)


async def run_gateway(settings: Any) -> None:
    """``govesb connect gateway``: serve until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    import asyncio
    import signal

    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    from streams.contract.signing import load_private_key

    view = RegistryView(settings.kafka)
    await view.start()
    producer = AIOKafkaProducer(**settings.kafka.durable_producer_options(linger_ms=1))
    await producer.start()
    gateway = Gateway(
        view=view,
        catalog=Catalog.load(settings.catalog),
        schemas=SchemaStore(AsyncSchemaRegistryClient(settings.schema_registry.client_config())),
        producer=producer,
        bus_key=load_private_key(settings.signing_key_file.read_bytes()),
        bus_key_id=settings.signing_key_id,
        clients={k.lower(): v.get_secret_value() for k, v in settings.clients.items()},
        max_body_bytes=settings.max_body_bytes,
        rate_per_s=settings.rate_per_s,
        burst=settings.burst,
        token_ttl_s=settings.token_ttl_s,
        produce_timeout_s=settings.produce_timeout_s,
    )
    runner = web.AppRunner(gateway.application(), access_log_class=AccessLog)
    await runner.setup()
    await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(TimeoutError):  # bounded: a dead broker cannot be flushed
            await asyncio.wait_for(producer.stop(), settings.produce_timeout_s)
        await view.stop()
