"""GovESB's request and reply over the bus: ``/engine/esb/request``, ``/nida-request``,
``/async`` (and ``/async-response``).

A request (``{"data":{"apiCode":…,"esbBody":{…}},"signature":…}``, read and verified as a
push is, every client quirk included) becomes a request event on the caller's ingress topic,
signed by the gateway, and the HTTP call is held until its answer comes back on
``esb.reply.<caller>`` or the service's deadline passes. The caller gets
``{"data":{"success":…,"requestId":"<32 hex>","esbBody":…|"message":…},"signature":…}``
signed by the gateway, HTTP 200 whatever the outcome (GovESB clients read
``data.success``); authentication and format errors keep their HTTP status (401, 400, 413,
415), as for a push. The gateway refuses early what it can tell at once (``unknown-api``,
``no-grant``, ``invalid-payload``, ``rate-exceeded``); the pipeline checks everything again
and its refusals come back as answers.

The request id is the bus's, new for every call (a request is a question: asking again is
another request); a ``requestId`` the caller put in its data is not used. ``/nida-request``
is ``/request`` with ``userId``, the caller's own user on whose behalf it asks: it must be a
string, it is covered by the signature, and it is kept out of the event (the request record
has no place for it, and the provider is given only what the service's schema holds).
GovESB's NIDA helpers wrap the body as ``{"Payload": {…}}``: the payload is the request.

A late answer (``/engine/esb/async``, signed by the provider) is published as the provider's
answer event with the request's reply ticket, read from ``esb.tickets``: the pipeline checks
it and passes it on to the requester's ``esb.reply`` topic (and its endpoint), marked late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiokafka.errors import BrokerResponseError, KafkaError
from aiolimiter import AsyncLimiter

from connectors.gateway.calls import Answer, ReplyReader, bus_key_ids
from connectors.gateway.errors import HttpError
from connectors.gateway.govesb import (
    SignedRequest,
    UnportableReply,
    declares_latin1,
    read_request,
    signed_reply,
    token_in_data,
    without_token,
)
from connectors.gateway.replies import (
    UNKNOWN_API,
    RequestMetrics,
    SchemaViolation,
    answer_data,
    avro_record,
    outcome_of,
    refusal_data,
    request_payload,
    timed_out_data,
)
from connectors.gateway.tickets import TicketBook, TicketHeaders
from streams.audit.chain import AuditChain
from streams.contract import topics
from streams.contract.catalog import API_CODE, EventType
from streams.contract.codec import RegistryUnavailableError, encode
from streams.contract.envelope import new_envelope
from streams.contract.reasons import Reason
from streams.contract.requests import (
    API_HEADER,
    MAX_MESSAGE,
    MESSAGE_HEADER,
    STATUS_HEADER,
    Status,
    Ticket,
    TicketError,
    answer_id,
    bus_request_id,
    govesb_request_id,
    new_request_id,
    read_ticket,
)
from streams.pipeline.validation import VIA_GATEWAY, VIA_HEADER
from streams.registry.view import ServiceRecord, grant_for

if TYPE_CHECKING:
    from connectors.gateway.app import Gateway
    from streams.registry.model import Grant

log = logging.getLogger(__name__)

MAX_USER_ID = 200


class Refusal(Exception):
    """A request the gateway refuses in GovESB terms: HTTP 200, ``success: false``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class RequestDesk:
    """The request routes of one gateway: holding calls, publishing requests and late
    answers. ``reader`` and ``tickets`` are started (and stopped) by the caller."""

    def __init__(
        self,
        gateway: Gateway,
        reader: ReplyReader,
        tickets: TicketBook,
        chain: AuditChain | None = None,
    ) -> None:
        self.gateway = gateway
        self.chain = chain
        self._audit_lock = asyncio.Lock()
        self.reader = reader
        self.calls = reader.calls
        self.tickets = tickets
        self.metrics = RequestMetrics(gateway.metrics.registry, self.calls)
        self._limits: dict[str, tuple[float, AsyncLimiter]] = {}

    def install(self, app: web.Application) -> None:
        """Add the routes to the gateway's application."""
        app.router.add_post("/engine/esb/request", self.request)
        app.router.add_post("/engine/esb/nida-request", self.nida_request)
        app.router.add_post("/engine/esb/async", self.late_answer)
        app.router.add_post("/engine/esb/async-response", self.late_answer)

    # ----------------------------------------------------------------- requests

    async def request(self, request: web.Request) -> web.Response:
        """POST /engine/esb/request."""
        return await self._call(request, nida=False)

    async def nida_request(self, request: web.Request) -> web.Response:
        """POST /engine/esb/nida-request: a request with ``userId``."""
        return await self._call(request, nida=True)

    async def _signed(self, request: web.Request) -> tuple[str, SignedRequest, Any]:
        """The caller, its verified request, and the data without the caller's token."""
        gateway = self.gateway
        institution = await gateway.auth.institution_of(
            request.headers, request.remote or "?", raw_token=True
        )
        if request.content_type != "application/json" and not (
            request.content_type == "text/plain" and declares_latin1(request.charset)
        ):
            raise HttpError(415, "unsupported_media_type", "send application/json")
        signed = read_request(await gateway._body(request), request.charset)
        view = gateway.view
        own_keys = [
            view.keyring.get(key_id)
            for key_id, owner in view.key_owners.items()
            if owner == institution
        ]
        if not any(key and key.verify(signed.data_bytes, signed.signature) for key in own_keys):
            raise signed.unverified()
        token = token_in_data(signed.data)
        if token is not None and gateway.auth.token_owner(token) != institution:
            raise HttpError(
                401, "invalid_token", "data.authorization is no live token of the caller"
            )
        data = without_token(signed.data)
        if not isinstance(data, dict):
            raise HttpError(400, "invalid_request", "data must be an object", field="data")
        return institution, signed, data

    async def _call(self, request: web.Request, *, nida: bool) -> web.Response:
        started = time.monotonic()
        institution, _, data = await self._signed(request)
        api_code = data.get("apiCode")
        if not api_code or not isinstance(api_code, str):
            raise HttpError(
                400, "invalid_request", "data.apiCode is required", field="data.apiCode"
            )
        if nida:
            user_id = data.get("userId")
            if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID:
                raise HttpError(
                    400, "invalid_request",
                    f"data.userId is required (a string of at most {MAX_USER_ID} characters)",
                    field="data.userId",
                )  # fmt: skip
        service = self.gateway.view.services.get(api_code)
        label = api_code if service is not None else UNKNOWN_API
        try:
            service, request_type, grant = self._allowed(institution, api_code)
            record = self._record(request_type, request_payload(data, nida=nida))
            await self._admit(grant)
        except Refusal as refusal:
            self._count(label, "refused", started)
            return self._reply(refusal_data(refusal.reason, refusal.detail, None))
        answer, request_id = await self._publish_and_wait(
            institution, service, request_type, record
        )
        if answer is None:
            self._count(api_code, "timed_out", started)
            log.warning(
                "request %s of %s to %s timed out after %g s",
                request_id, institution, api_code, service.deadline_s,
            )  # fmt: skip
            await self._audit_timeout(institution, service, request_type, request_id)
            return self._reply(timed_out_data(request_id, service.deadline_s))
        self._count(api_code, outcome_of(answer), started)
        try:
            return self._reply(answer_data(answer, request_id))
        except UnportableReply as error:  # the bus passed it; no GovESB client could verify it
            log.error("the answer to %s cannot be signed portably: %s", request_id, error)
            return self._reply(refusal_data(Reason.INVALID_ANSWER, str(error), request_id))

    def _allowed(self, institution: str, api_code: str) -> tuple[ServiceRecord, EventType, Grant]:
        view, catalog = self.gateway.view, self.gateway.catalog
        service = view.services.get(api_code)
        described = catalog.services.get(api_code)
        if service is None or described is None:
            shown = repr(api_code) if API_CODE.match(api_code) else "(not an api code)"
            raise Refusal(Reason.UNKNOWN_API, f"no service has api code {shown}")
        grant = grant_for(view, institution, api_code)
        if grant is None:
            raise Refusal(Reason.NO_GRANT, f"{institution} has no grant for {api_code}")
        return service, described.request, grant

    @staticmethod
    def _record(request_type: EventType, payload: Any) -> dict[str, Any]:
        try:
            return avro_record(request_type, payload, "esbBody")
        except SchemaViolation as error:
            raise Refusal(Reason.INVALID_PAYLOAD, str(error)) from None

    async def _admit(self, grant: Grant) -> None:
        """Count one request against the grant's rate (bursts of one second's worth)."""
        held = self._limits.get(grant.id)
        if held is None or held[0] != grant.rate_per_s:
            burst = max(1.0, grant.rate_per_s)
            held = (grant.rate_per_s, AsyncLimiter(burst, burst / grant.rate_per_s))
            self._limits[grant.id] = held
        limiter = held[1]
        if not limiter.has_capacity():
            raise Refusal(
                Reason.RATE_EXCEEDED,
                f"{grant.consumer} may make {grant.rate_per_s:g} requests a second to "
                f"{grant.api_code}",
            )
        await limiter.acquire()  # there is room: returns at once

    async def _publish_and_wait(
        self, institution: str, service: ServiceRecord, request_type: EventType,
        record: dict[str, Any],
    ) -> tuple[Answer | None, str]:  # fmt: skip
        """Publish the request and wait for its answer until the service's deadline."""
        request_id = new_request_id()
        deadline_at = time.monotonic() + service.deadline_s
        await self.reader.follow([institution])
        if not self.reader.following(institution):
            raise HttpError(
                503, "replies_unavailable",
                f"the answers to {institution} cannot be read now; try again", retry_after=5,
            )  # fmt: skip
        future = self.calls.hold(request_id, institution, service.api_code)
        try:
            await self._produce(
                institution, "govesb-request", request_type, record, request_id,
                extra=[(API_HEADER, service.api_code.encode())],
            )  # fmt: skip
            try:
                remaining = max(0.0, deadline_at - time.monotonic())
                return await asyncio.wait_for(future, remaining), request_id
            except TimeoutError:
                return None, request_id
        finally:
            self.calls.release(request_id)

    async def _produce(
        self,
        institution: str,
        system: str,
        event_type: EventType,
        record: dict[str, Any] | None,
        request_id: str,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        extra: list[tuple[str, bytes]],
    ) -> None:
        """Encode (``record`` None: no value), sign by the gateway and produce, keyed by the
        request id; the errors as ``Gateway.publish`` has them."""
        gateway = self.gateway
        value: bytes | None = None
        if record is not None:
            try:
                schema_id = await gateway.schemas.id_for(event_type)
            except (RegistryUnavailableError, LookupError) as error:
                raise HttpError(503, "registry_unavailable", str(error).split(":")[0]) from None
            try:
                value = encode(schema_id, event_type.parsed, record)
            except (ValueError, TypeError, OverflowError) as error:
                raise HttpError(
                    400, "invalid_data",
                    f"data cannot be encoded as {event_type.name}: {type(error).__name__}",
                ) from None  # fmt: skip
            if len(value) > gateway.max_body_bytes:
                raise HttpError(413, "too_large", "the encoded event is over the size limit")
        envelope = new_envelope(
            institution, system, event_type.name, request_id,
            event_id=event_id or request_id, correlation_id=correlation_id,
        )  # fmt: skip
        envelope = envelope.sealed(gateway.bus_key_id, gateway.bus_key, value or b"")
        try:
            await asyncio.wait_for(
                gateway.producer.send_and_wait(
                    topics.ingress(institution),
                    value,
                    key=request_id.encode(),
                    headers=[*envelope.to_headers(), (VIA_HEADER, VIA_GATEWAY), *extra],
                ),
                gateway.produce_timeout_s,
            )
        except BrokerResponseError as error:
            if error.retriable:
                raise gateway._unacknowledged(error, envelope.id) from None
            log.warning("the broker refused a request of %s: %s", institution, error.message)
            raise HttpError(
                502, "broker_refused", f"the bus refused the event ({type(error).__name__})"
            ) from None
        except (KafkaError, TimeoutError) as error:
            raise gateway._unacknowledged(error, envelope.id) from None

    async def _audit_timeout(
        self, institution: str, service: ServiceRecord, request_type: EventType, request_id: str
    ) -> None:
        """One record in the gateway's audit chain for a call it answered ``timed-out``.

        Appended and handed to the producer under one lock, so the chain reaches its
        partition in order; not awaited further (the caller's answer does not wait for it).
        """
        if self.chain is None:
            return
        async with self._audit_lock:
            key, value = self.chain.append(
                outcome="timed-out",
                event_id=request_id,
                publisher=institution,
                event_type=request_type.name,
                payload_sha256=None,
                subscribers=[service.provider],
                reason=str(Reason.TIMED_OUT),
                detail=f"api {service.api_code}, no answer within {service.deadline_s:g} s",
            )
            try:
                await self.gateway.producer.send(topics.AUDIT, value, key=key)
            except KafkaError as error:
                log.error("audit record of %s not sent: %s", request_id, error)

    def _count(self, api: str, outcome: str, started: float) -> None:
        self.metrics.requests.labels(api, outcome).inc()
        if api != UNKNOWN_API:
            self.metrics.round_trip.labels(api).observe(time.monotonic() - started)

    def _reply(self, data: Mapping[str, Any], status: int = 200) -> web.Response:
        try:
            text = signed_reply(data, self.gateway.bus_key)
        except UnportableReply:  # a message echoing what the caller sent (a field path)
            if "esbBody" in data:
                raise  # an answer: the caller decides what to say instead
            kept = {k: v for k, v in data.items() if k in ("success", "requestId")}
            reason = str(data.get("message", "")).partition(":")[0]
            text = signed_reply({**kept, "message": reason or "refused"}, self.gateway.bus_key)
        return web.Response(text=text, status=status, content_type="application/json")

    # ----------------------------------------------------------------- late answers

    async def late_answer(self, request: web.Request) -> web.Response:
        """POST /engine/esb/async: a provider's answer to ``requestId``, after the deadline."""
        institution, _, data = await self._signed(request)
        given = data.get("requestId")
        request_id = bus_request_id(given) if isinstance(given, str) else None
        if request_id is None:
            raise HttpError(
                400, "invalid_request", "data.requestId must be the request's id (32 hex digits)",
                field="data.requestId",
            )  # fmt: skip
        refusal = self._late_refusal(institution, request_id)
        if isinstance(refusal, web.Response):
            return refusal
        ticket, headers = refusal
        described = self.gateway.catalog.services.get(ticket.api_code)
        if ticket.api_code not in self.gateway.view.services or described is None:
            return self._late_refused(
                ticket.api_code, 404, Reason.UNKNOWN_API,
                f"{ticket.api_code} is no longer served", request_id,
            )  # fmt: skip
        success = data.get("success")
        if not isinstance(success, bool):
            raise HttpError(
                400, "invalid_request", "data.success must be true or false", field="data.success"
            )
        extra = [(API_HEADER, ticket.api_code.encode()), *headers]
        record: dict[str, Any] | None = None
        if success:
            try:
                record = avro_record(described.response, data.get("esbBody"), "data.esbBody")
            except SchemaViolation as error:
                raise HttpError(400, "invalid_data", str(error), field=error.field) from None
            extra.append((STATUS_HEADER, Status.ANSWERED.encode()))
        else:
            message = data.get("message")
            text = message if isinstance(message, str) else "the provider could not answer"
            extra += [
                (STATUS_HEADER, Status.PROVIDER_ERROR.encode()),
                ("esb_reason", Reason.PROVIDER_ERROR.encode()),
                (MESSAGE_HEADER, text[:MAX_MESSAGE].encode("utf-8", "replace")),
            ]
        published = answer_id(request_id)
        await self._produce(
            institution, "govesb-async", described.response, record, request_id,
            event_id=published, correlation_id=request_id, extra=extra,
        )  # fmt: skip
        self.metrics.late_answers.labels(ticket.api_code, "published").inc()
        ack = {
            "success": True,
            "requestId": govesb_request_id(request_id),
            "esbBody": {"eventId": published},
        }
        return self._reply(ack, 202)

    def _late_refusal(
        self, institution: str, request_id: str
    ) -> tuple[Ticket, TicketHeaders] | web.Response:
        """The ticket of ``request_id`` and its headers, or the signed refusal to answer."""
        headers = self.tickets.get(request_id)
        shown = govesb_request_id(request_id)
        if headers is None:
            return self._late_refused(
                UNKNOWN_API, 404, Reason.BAD_TICKET,
                f"no request {shown} takes answers now (unknown, or past its time)", request_id,
            )  # fmt: skip
        try:
            ticket = read_ticket(
                headers, self.gateway.view.keyring,
                bus_key_ids(self.gateway.view, self.gateway.bus_key_id),
            )  # fmt: skip
        except TicketError as error:
            log.error("the ticket of %s on %s: %s", request_id, topics.TICKETS, error)
            return self._late_refused(
                UNKNOWN_API, 404, Reason.BAD_TICKET, f"no valid ticket for {shown}", request_id
            )
        if ticket.provider != institution:
            return self._late_refused(
                ticket.api_code, 403, Reason.BAD_TICKET,
                f"request {shown} was not routed to {institution}", request_id,
            )  # fmt: skip
        if time.time() * 1000 > ticket.until_ms:
            return self._late_refused(
                ticket.api_code, 410, Reason.LATE_ANSWER,
                f"answers to {shown} were taken until its deadline plus the late-answer time",
                request_id,
            )  # fmt: skip
        return ticket, headers

    def _late_refused(
        self, api: str, status: int, reason: Reason, detail: str, request_id: str
    ) -> web.Response:
        self.metrics.late_answers.labels(api, "refused").inc()
        return self._reply(refusal_data(reason, detail, request_id), status)


def attach(
    gateway: Gateway, reader: ReplyReader, tickets: TicketBook, chain: AuditChain | None = None
) -> RequestDesk:
    """The request routes and their /health checks added to ``gateway``; ``reader`` and
    ``tickets`` must be started before the gateway serves (so no answer is missed); calls
    that time out are recorded in ``chain``."""
    desk = RequestDesk(gateway, reader, tickets, chain)
    gateway.route_installers.append(desk.install)
    gateway.checks.update(
        replies=desk.reader.health,
        tickets=desk.tickets.health,
    )
    return desk
