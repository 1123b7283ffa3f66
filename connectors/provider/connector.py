"""The provider connector: ``esb.request.<provider>`` to the provider's legacy HTTP API, and its
answers back to ``esb.ingress.<provider>``.

For each request routed by the bus: the bus's signature and reply ticket are checked, the request is
POSTed to the service's endpoint in GovESB provider format (signed by the bus's delivery key), the
provider's signed answer is verified against its current registry keys, its ``esbBody`` validated
against the service's response schema and encoded, and the answer event (signed by the gateway key,
``esb_via: gateway``) is produced. Requests are handled concurrently, so a slow provider call does
not hold the others (:mod:`connectors.provider.flow`). Connection errors, timeouts, 408/425/429 and
5xx are retried with backoff within the deadline, up to the service's ``max_attempts``. Every
request gets exactly one answer event (but one read after its ticket expired: the bus would refuse
any answer to it): what cannot be answered is a ``provider-error`` answer with its reason. A
partition's offset moves on only past requests whose answers were acknowledged; a request in flight
when the connector dies is read again and answered once by the next one (the answer id is derived
from the request id, and the pipeline refuses a second answer to one request).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer, ConsumerRecord

from connectors.gateway.replies import SchemaViolation, avro_record
from connectors.http_sink.delivery import (
    HttpRequest,
    RetryPolicy,
    basic_auth,
    hmac_signature,
    retry_after_s,
    verdict,
)
from connectors.http_sink.transport import (
    REDIRECT_REFUSED,
    TokenUnavailableError,
    fetch_token,
    read_capped,
)
from connectors.provider.exchange import (
    ProviderAnswer,
    failure,
    provider_request,
    read_answer,
)
from connectors.provider.metrics import ProviderMetrics
from streams.client.answering import answer_event
from streams.contract.catalog import Catalog
from streams.contract.codec import RegistryUnavailableError, SchemaStore, encode
from streams.contract.envelope import Envelope
from streams.contract.jsonavro import to_json
from streams.contract.reasons import EventError, Reason
from streams.contract.requests import Status, Ticket, TicketError, read_ticket
from streams.contract.signing import PrivateKey, PublicKey, SigningError, verify_event
from streams.pipeline.validation import OPERATOR
from streams.registry.model import Endpoint
from streams.registry.view import RegistryView, ServiceRecord
from streams.retrying import until_available

log = logging.getLogger(__name__)


class NotFromTheBus(Exception):
    """A record on the request topic that the bus did not route (no answer is possible)."""


@dataclass
class ProviderConnector:
    """Answers one provider's requests through its HTTP API: ``handle``, ``close``.

    ``credentials``: secret of each ``secret_ref`` the provider's endpoints name (never
    logged). ``bus_key`` signs the requests sent to the provider (the delivery key);
    ``answer_key`` signs the answer events (the gateway key).
    """

    provider: str
    system: str
    view: RegistryView
    catalog: Catalog
    session: aiohttp.ClientSession
    producer: AIOKafkaProducer
    schemas: SchemaStore
    bus_key: PrivateKey
    answer_key: PrivateKey
    answer_key_id: str
    gateway_key_ids: frozenset[str] = frozenset()
    credentials: dict[str, str] = field(default_factory=dict)
    backoff: RetryPolicy = field(default_factory=lambda: RetryPolicy(10, 0.1, 2.0))
    max_answer_bytes: int = 1_000_000
    ssl_context: ssl.SSLContext | None = None
    metrics: ProviderMetrics = field(default_factory=ProviderMetrics)
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Answer one request; return once its answer event is acknowledged."""
        ack = await self.answer(record)
        if ack is not None:
            await ack

    async def close(self) -> None:
        """Release the HTTP session."""
        await self.session.close()

    # ----------------------------------------------------------------- one request

    def bus_keys(self) -> set[str]:
        """The delivery keys of the bus: the operator's keys but its gateway keys."""
        gateway = self.gateway_key_ids | {self.answer_key_id}
        return {k for k, owner in self.view.key_owners.items() if owner == OPERATOR} - gateway

    def provider_keys(self) -> list[PublicKey]:
        """The provider's current public keys in the registry."""
        ids = [k for k, owner in self.view.key_owners.items() if owner == self.provider]
        return [key for key in map(self.view.keyring.get, ids) if key is not None]

    def routed(self, record: ConsumerRecord[bytes, bytes]) -> tuple[Envelope, Ticket]:
        """The request's envelope and ticket, if the bus routed it to this provider.

        Raises:
            NotFromTheBus: not signed by a delivery key of the bus, or its ticket is not.
        """
        bus_keys = self.bus_keys()
        try:
            envelope = Envelope.from_headers(record.headers)
            if envelope.sig_key_id not in bus_keys:
                raise NotFromTheBus(f"signed with {envelope.sig_key_id!r}, not a bus key")
            verify_event(
                self.view.keyring, envelope.sig_key_id or "", envelope.signature or "",
                envelope.id, envelope.source, envelope.type, envelope.time, record.value or b"",
            )  # fmt: skip
            ticket = read_ticket(record.headers, self.view.keyring, bus_keys)
        except (EventError, SigningError, TicketError) as error:
            raise NotFromTheBus(str(error)) from None
        if ticket.provider != self.provider or ticket.request_id != envelope.id:
            raise NotFromTheBus("the ticket is for another provider or request")
        return envelope, ticket

    async def answer(self, record: ConsumerRecord[bytes, bytes]) -> asyncio.Future[Any] | None:
        """Answer one request; the future of its answer event's acknowledgement (None for a
        record the bus did not route, which has no ticket to answer with, and for a request
        read after its ticket expired, whose answer the bus would refuse)."""
        try:
            envelope, ticket = self.routed(record)
        except NotFromTheBus as error:
            log.warning("request at %s[%d]@%d ignored: %s",
                        record.topic, record.partition, record.offset, error)  # fmt: skip
            self.metrics.child(self.metrics.requests, self.provider, "", "not-from-bus").inc()
            return None
        if time.time() * 1000 > ticket.until_ms:
            # Nobody waits for it any more and the bus would refuse any answer (late-answer):
            # a connector catching up after an outage does not call the provider for those.
            self.metrics.child(self.metrics.requests, self.provider, ticket.api_code,
                               "expired").inc()  # fmt: skip
            return None
        started = time.monotonic()
        service = self.view.services.get(ticket.api_code)
        entry = self.catalog.services.get(ticket.api_code)
        value = b""
        if service is None or entry is None or service.endpoint is None:
            # Requests to a provider are read by one group; this one calls HTTP endpoints.
            outcome = failure(Reason.PROVIDER_UNAVAILABLE, "the service has no HTTP endpoint")
        else:
            outcome = await self._call(record, envelope, ticket, service, service.endpoint)
        if outcome.status is Status.ANSWERED and entry is not None:
            outcome, value = await self._encode(outcome, entry.response)
        if entry is not None:
            response_type = entry.response.name
        else:
            response_type = service.response_type if service is not None else ""
        event = answer_event(
            envelope, record.headers, provider=self.provider, system=self.system,
            api_code=ticket.api_code, response_type=response_type, status=outcome.status,
            value=value, reason=outcome.reason, message=outcome.message,
            key_id=self.answer_key_id, key=self.answer_key, via_gateway=True,
            now=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        ack: asyncio.Future[Any] = await self.producer.send(
            event.topic, event.value, key=event.key, headers=event.headers
        )
        label = outcome.status.value if outcome.reason is None else outcome.reason.value
        self.metrics.child(self.metrics.requests, self.provider, ticket.api_code, label).inc()
        self.metrics.child(self.metrics.round_trip, self.provider, ticket.api_code).observe(
            time.monotonic() - started
        )
        return ack

    async def _encode(self, outcome: ProviderAnswer, response: Any) -> tuple[ProviderAnswer, bytes]:
        """The answer's ``esbBody`` as the response record (wire format), or invalid-answer."""
        try:
            record = avro_record(response, outcome.body, "esbBody")
        except SchemaViolation as error:
            return failure(Reason.INVALID_ANSWER, str(error)), b""
        schema_id = await until_available(
            lambda: self.schemas.id_for(response), RegistryUnavailableError, "schema registry", log
        )
        try:
            value = encode(schema_id, response.parsed, record)
        except (ValueError, TypeError, OverflowError) as error:  # validated, yet unencodable
            return failure(Reason.INVALID_ANSWER, f"esbBody: {type(error).__name__}"), b""
        if len(value) > self.max_answer_bytes:
            return failure(Reason.INVALID_ANSWER, "the answer is over the size limit"), b""
        return outcome, value

    async def _call(
        self,
        record: ConsumerRecord[bytes, bytes],
        envelope: Envelope,
        ticket: Ticket,
        service: ServiceRecord,
        endpoint: Endpoint,
    ) -> ProviderAnswer:
        """POST the request, retrying what can succeed within the deadline."""
        try:
            decoded = await until_available(
                lambda: self.schemas.decode(record.value or b""),
                RegistryUnavailableError, "schema registry", log,
            )  # fmt: skip
            request = provider_request(to_json(decoded.record), envelope.id, ticket.api_code,
                                       self.bus_key)  # fmt: skip
        except (ValueError, TypeError, LookupError) as error:
            return failure(
                Reason.PROVIDER_ERROR, f"the request cannot be sent: {type(error).__name__}"
            )
        # Within the requester's deadline while it waits; past it (a late start), within the
        # ticket's last moment.
        now_ms = time.time() * 1000
        end = ticket.deadline_ms if now_ms < ticket.deadline_ms else ticket.until_ms
        last = "no attempt"
        for attempt in range(1, service.max_attempts + 1):
            remaining = end / 1000 - time.time()
            if remaining <= 0:
                break
            timeout = aiohttp.ClientTimeout(total=min(endpoint.timeout_s, remaining))
            status, retry_after, body, charset, last = await self._send(endpoint, request, timeout)
            if status is not None and 200 <= status < 300:
                if len(body) > self.max_answer_bytes:
                    return failure(Reason.INVALID_ANSWER, "the answer is over the size limit")
                return read_answer(body, charset, self.provider_keys())
            if verdict(status) != "retry":
                return failure(Reason.PROVIDER_ERROR, f"the provider answered {last}")
            wait = self.backoff.delay(attempt, retry_after)
            if attempt == service.max_attempts or time.time() + wait >= end / 1000:
                break
            await asyncio.sleep(wait)
        return failure(Reason.PROVIDER_UNAVAILABLE, f"no answer from the provider in time ({last})")

    async def _send(
        self, endpoint: Endpoint, request: HttpRequest, client_timeout: aiohttp.ClientTimeout
    ) -> tuple[int | None, float | None, bytes, str | None, str]:
        """One attempt: status (None: no answer), Retry-After, body, charset, what happened."""
        started = time.monotonic()
        try:
            headers = await self._headers(endpoint, request, client_timeout)
            async with self.session.post(
                endpoint.url, data=request.body, headers=headers, timeout=client_timeout,
                ssl=self.ssl_context or endpoint.verify_tls, allow_redirects=False,
            ) as response:  # fmt: skip
                status = response.status
                body = await read_capped(response, self.max_answer_bytes + 1)
                charset = response.charset
                retry_after = retry_after_s(
                    response.headers.get("Retry-After"), dt.datetime.now(dt.UTC)
                )
        except TokenUnavailableError as error:
            self.metrics.child(self.metrics.attempts, self.provider, "token").inc()
            # Only what happened goes to the requester: never the token endpoint's own words.
            log.warning("%s: token endpoint: %s", self.provider, error)
            shown = "the provider's token endpoint " + (
                "could not be reached" if error.retryable else "refused the bus's credentials"
            )
            return (None if error.retryable else 401), None, b"", None, shown
        except (aiohttp.ClientError, TimeoutError) as error:
            self.metrics.child(self.metrics.attempts, self.provider, "error").inc()
            return None, None, b"", None, type(error).__name__
        finally:
            self.metrics.child(self.metrics.latency, self.provider).observe(
                time.monotonic() - started
            )
        self.metrics.child(self.metrics.attempts, self.provider, str(status)).inc()
        # The status only: the body of a provider's error page (a stack trace, say) is not for
        # the requester, who reads this in the answer's message.
        what = f"HTTP {status}" + (f": {REDIRECT_REFUSED}" if 300 <= status < 400 else "")
        return status, retry_after, body, charset, what

    async def _headers(
        self, endpoint: Endpoint, request: HttpRequest, client_timeout: aiohttp.ClientTimeout
    ) -> dict[str, str]:
        """The request's headers with the endpoint's auth, as the HTTP sink authenticates."""
        auth = endpoint.auth
        secret = self.credentials.get((auth.secret_ref or "").lower(), "")
        headers = dict(request.headers)
        if auth.type == "bearer":
            headers["Authorization"] = f"Bearer {secret}"
        elif auth.type == "basic":
            headers["Authorization"] = basic_auth(auth.username or "", secret)
        elif auth.type == "hmac":
            signature = hmac_signature(secret.encode(), request.body, int(time.time()))
            headers["X-GovESB-Signature"] = signature
        elif auth.type == "oauth2":
            cached = self._tokens.get(auth.token_url or "")
            if cached is None or time.monotonic() >= cached[1]:
                token, lifetime = await fetch_token(
                    self.session, auth.token_url or "", auth.username or "", secret,
                    client_timeout=client_timeout,
                    ssl_option=self.ssl_context or endpoint.verify_tls, max_body_bytes=65_536,
                )  # fmt: skip
                cached = (token, time.monotonic() + max(1.0, lifetime * 0.9))
                self._tokens[auth.token_url or ""] = cached
            headers["Authorization"] = f"Bearer {cached[0]}"
        return headers


def counts_by_outcome(metrics: ProviderMetrics) -> dict[str, float]:
    """Requests answered so far, by outcome (for tests and /health)."""
    totals: dict[str, float] = defaultdict(float)
    for metric in metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels["outcome"]] += sample.value
    return dict(totals)
