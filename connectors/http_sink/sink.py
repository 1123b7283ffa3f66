"""The HTTP sink: ``esb.deliver.<subscriber>`` to the subscriber's legacy HTTP endpoint.

One consumer group per subscriber endpoint. Records of one key are delivered in order, keys
in parallel (bounded). Timeouts, connection errors, 408/425/429 (``Retry-After`` honoured) and
5xx are retried with exponential backoff and jitter; other 4xx, and records whose attempts are
spent, go to ``esb.dlq.<subscriber>`` with the error. Offsets are committed only after every
record of a batch was delivered or dead-lettered. A circuit breaker per endpoint pauses
consumption while the endpoint is down instead of spending attempts: once open, nothing is sent
until its cooldown has passed, then a single trial request (half-open) closes it again or
reopens it; attempts made while the breaker is not closed are not counted against a record.
An Avro delivery whose schema is not cached waits (that key only) while the schema registry
is unavailable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from connectors.http_sink.delivery import (
    CircuitBreaker,
    HttpRequest,
    RetryPolicy,
    basic_auth,
    cloudevents_request,
    govesb_request,
    hmac_signature,
    retry_after_s,
    sign_body,
    verdict,
)
from streams.audit.chain import AuditChain
from streams.contract import topics
from streams.contract.codec import RegistryUnavailableError, SchemaStore
from streams.contract.envelope import CONTENT_TYPE, JSON_CONTENT_TYPE, Envelope, parse_time
from streams.contract.jsonavro import to_json_bytes
from streams.contract.reasons import EventError
from streams.contract.signing import PrivateKey
from streams.registry.model import Endpoint
from streams.retrying import until_available

log = logging.getLogger(__name__)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
DELIVERY_CONTENT_TYPES = (JSON_CONTENT_TYPE, CONTENT_TYPE)


class SinkMetrics:
    """Metrics of one sink process; names start with ``govesb_sink_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "govesb_sink_deliveries",
            "Records finished, by outcome (delivered, dead-lettered) and last HTTP status.",
            ["subscriber", "outcome", "status"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "govesb_sink_attempts",
            "HTTP requests sent, by status ('error' for connection errors and timeouts).",
            ["subscriber", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "govesb_sink_request_seconds",
            "Duration of one HTTP request to the endpoint.",
            ["subscriber"],
            registry=self.registry,
        )
        self.breaker = Gauge(
            "govesb_sink_breaker_state",
            "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open.",
            ["subscriber"],
            registry=self.registry,
        )
        self.dlq = Counter(
            "govesb_sink_dlq",
            "Records written to esb.dlq.<subscriber>.",
            ["subscriber"],
            registry=self.registry,
        )
        self.end_to_end = Histogram(
            "govesb_delivery_end_to_end_seconds",
            "From the event's ce_time (set by the publisher) to the endpoint's 2xx answer.",
            ["subscriber"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.lag = Gauge(
            "govesb_consumer_lag",
            "Delivery records not yet delivered or dead-lettered, per topic partition.",
            ["group", "topic", "partition"],
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (it is on every delivery's path)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


@dataclass
class Credentials:
    """Secrets for the endpoint's auth, resolved from the sink's settings (never logged)."""

    secret: str | None = None
    username: str | None = None


@dataclass
class HttpSink:
    """Delivers deliver-topic records to one endpoint: ``add`` then ``flush``, ``close``."""

    subscriber: str
    endpoint: Endpoint
    session: aiohttp.ClientSession
    producer: AIOKafkaProducer
    schemas: SchemaStore
    bus_key: PrivateKey
    bus_key_id: str
    chain: AuditChain
    credentials: Credentials = field(default_factory=Credentials)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    concurrency: int = 16
    metrics: SinkMetrics = field(default_factory=SinkMetrics)
    _pending: OrderedDict[bytes | None, list[ConsumerRecord[bytes, bytes]]] = field(
        default_factory=OrderedDict
    )
    _acks: list[asyncio.Future[Any]] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None
    _receipts: list[tuple[bytes, bytes]] = field(default_factory=list)
    _token: tuple[str, float] | None = None
    _token_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _client_timeout: aiohttp.ClientTimeout = field(default_factory=aiohttp.ClientTimeout)
    _trial: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        # Series that exist from the start, so rate()/increase() see their first change.
        self._metric(self.metrics.dlq)
        self._metric(self.metrics.breaker).set(BREAKER_STATES[self.breaker.state])

    def _metric(self, metric: Any, *labels: str) -> Any:
        return self.metrics.child(metric, self.subscriber, *labels)

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Queue a record; records of one key keep their order."""
        self._pending.setdefault(record.key, []).append(record)

    async def flush(self) -> None:
        """Deliver or dead-letter everything queued; return when all are done."""
        pending, self._pending = self._pending, OrderedDict()
        limit = asyncio.Semaphore(self.concurrency)

        async def one_key(records: list[ConsumerRecord[bytes, bytes]]) -> None:
            async with limit:
                for record in records:
                    await self._deliver(record)

        await asyncio.gather(*(one_key(records) for records in pending.values()))
        await self._send_receipts()
        # Dead letters and receipts must be acknowledged before the offsets move on.
        acks, self._acks = self._acks, []
        await asyncio.gather(*acks)

    async def close(self) -> None:
        """Nothing buffered is dropped: flush, then release the HTTP session."""
        await self.flush()
        await self.session.close()

    def request_for(self, envelope: Envelope, body: bytes, agreement: str) -> HttpRequest:
        """The request for one delivery, auth headers included.

        ``envelope`` carries the bus's signature over ``body`` (the CloudEvents form uses it;
        the GovESB form is signed over its ``data`` bytes here).
        """
        if self.endpoint.format == "govesb":
            request = govesb_request(envelope, body, agreement, self.bus_key)
        else:
            request = cloudevents_request(envelope, body, agreement)
        auth = self.endpoint.auth
        secret = self.credentials.secret or ""
        if auth.type == "bearer":
            request.headers["Authorization"] = f"Bearer {secret}"
        elif auth.type == "basic":
            request.headers["Authorization"] = basic_auth(auth.username or "", secret)
        elif auth.type == "hmac":
            request.headers["X-GovESB-Signature"] = hmac_signature(
                secret.encode(), request.body, int(time.time())
            )
        return request

    async def _body(self, record: ConsumerRecord[bytes, bytes]) -> tuple[Envelope, bytes]:
        """The envelope signed over the JSON body to send.

        The pipeline renders and signs HTTP agreements' bodies: those bytes go out unchanged.
        An Avro delivery (a Kafka agreement's record) is decoded, rendered and signed here.
        """
        envelope = Envelope.from_headers(record.headers, accept=DELIVERY_CONTENT_TYPES)
        if envelope.content_type == JSON_CONTENT_TYPE and envelope.signature:
            return envelope, record.value or b""
        body = to_json_bytes((await self.schemas.decode(record.value or b"")).record)
        return sign_body(envelope, body, self.bus_key, self.bus_key_id), body

    async def _deliver(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            # An Avro delivery whose schema this process has not cached yet waits for the
            # registry (this key only; other keys go on), and is never given up.
            envelope, body = await until_available(
                lambda: self._body(record), RegistryUnavailableError, "schema registry", log
            )
        except EventError as error:
            await self._dead_letter(record, None, 0, f"{error.reason}: {error.detail}")
            return
        agreement = next((v for k, v in record.headers if k == "esb_subscription"), b"").decode()
        request = self.request_for(envelope, body, agreement)
        attempts = 0
        renewed = False
        started = time.monotonic()
        while True:
            now = time.monotonic()
            wait = self.breaker.wait_s(now)
            if wait:
                await asyncio.sleep(wait)
                continue
            trial: asyncio.Future[None] | None = None
            if self.breaker.state != "closed":
                if self._trial is not None:  # one trial request at a time; the others wait
                    await asyncio.wait([self._trial])
                    continue
                self.breaker.allow(now)  # open -> half-open: this request is the trial
                self._metric(self.metrics.breaker).set(BREAKER_STATES[self.breaker.state])
                trial = self._trial = asyncio.get_running_loop().create_future()
            try:
                if self.endpoint.auth.type == "oauth2":
                    request.headers["Authorization"] = f"Bearer {await self._oauth_token()}"
                status, retry_after, excerpt = await self._send(request)
                # Attempts while the breaker is not closed (the trial) are not counted.
                attempts += 1 if trial is None else 0
                if status == 401 and self.endpoint.auth.type == "oauth2" and not renewed:
                    self._token, renewed = None, True  # expired or revoked: renew, send again
                    continue
                outcome = verdict(status)
                self.breaker.record(outcome != "retry", time.monotonic())
                self._metric(self.metrics.breaker).set(BREAKER_STATES[self.breaker.state])
            finally:
                if trial is not None:
                    self._trial = None
                    trial.set_result(None)
            if outcome == "delivered":
                self._metric(self.metrics.deliveries, "delivered", str(status)).inc()
                self._metric(self.metrics.end_to_end).observe(
                    max(0.0, time.time() - parse_time(envelope.time).timestamp())
                )
                await self._receipt("delivered", envelope, status, attempts, started)
                return
            if outcome == "dead-letter" or attempts >= self.policy.max_attempts:
                await self._dead_letter(
                    record, status, attempts, excerpt or "no response", envelope, started
                )
                return
            await self._receipt("retrying", envelope, status, attempts, started)  # the trace
            await asyncio.sleep(self.policy.delay(max(attempts, 1), retry_after))

    async def _oauth_token(self) -> str:
        """A cached OAuth2 client-credentials token, renewed a little before it expires."""
        async with self._token_lock:
            if self._token is not None and time.monotonic() < self._token[1]:
                return self._token[0]
            auth = self.endpoint.auth
            try:
                async with self.session.post(
                    auth.token_url or "",
                    data={"grant_type": "client_credentials"},
                    headers={
                        "Authorization": basic_auth(
                            auth.username or "", self.credentials.secret or ""
                        )
                    },
                    timeout=self._timeout(),
                    ssl=self.ssl_context or self.endpoint.verify_tls,
                ) as response:
                    body = await response.json(content_type=None)
                    if response.status != 200 or "access_token" not in body:
                        log.warning("token endpoint answered %d", response.status)
                        return ""
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                log.warning("token endpoint unreachable: %s", type(error).__name__)
                return ""
            lifetime = float(body.get("expires_in", 300))
            self._token = (str(body["access_token"]), time.monotonic() + max(1.0, lifetime * 0.9))
            return self._token[0]

    def _timeout(self) -> aiohttp.ClientTimeout:
        """The endpoint's request timeout (the endpoint may change with the registry)."""
        if self._client_timeout.total != self.endpoint.timeout_s:
            self._client_timeout = aiohttp.ClientTimeout(total=self.endpoint.timeout_s)
        return self._client_timeout

    async def _send(self, request: HttpRequest) -> tuple[int | None, float | None, str]:
        started = time.monotonic()
        try:
            async with self.session.post(
                self.endpoint.url,
                data=request.body,
                headers=request.headers,
                timeout=self._timeout(),
                ssl=self.ssl_context or self.endpoint.verify_tls,  # True: default CA checks
                allow_redirects=False,
            ) as response:
                status = response.status
                text = "" if 200 <= status < 300 else await response.text(errors="replace")
                if 200 <= status < 300:
                    await response.read()
                retry_after = (
                    retry_after_s(response.headers.get("Retry-After"), dt.datetime.now(dt.UTC))
                    if status in (408, 425, 429, 503)
                    else None
                )
        except (aiohttp.ClientError, TimeoutError) as error:
            self._metric(self.metrics.attempts, "error").inc()
            return None, None, f"{type(error).__name__}"
        finally:
            self._metric(self.metrics.latency).observe(time.monotonic() - started)
        self._metric(self.metrics.attempts, str(status)).inc()
        return status, retry_after, f"HTTP {status}: {text[:200]}"

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        status: int | None,
        attempts: int,
        error: str,
        envelope: Envelope | None = None,
        started: float | None = None,
    ) -> None:
        headers = [
            *record.headers,
            ("esb_error", error.encode()),
            ("esb_status", str(status or 0).encode()),
            ("esb_attempts", str(attempts).encode()),
            ("esb_source", f"{record.topic}[{record.partition}]@{record.offset}".encode()),
        ]
        self._acks.append(
            await self.producer.send(
                topics.dlq(self.subscriber), record.value, key=record.key, headers=headers
            )
        )
        self._metric(self.metrics.dlq).inc()
        self._metric(self.metrics.deliveries, "dead-lettered", str(status or 0)).inc()
        if envelope is not None:
            await self._receipt("dead-lettered", envelope, status, attempts, started)

    async def _receipt(
        self,
        outcome: str,
        envelope: Envelope,
        status: int | None,
        attempts: int,
        started: float | None,
    ) -> None:
        latency_ms = int((time.monotonic() - (started or time.monotonic())) * 1000)
        key, value = self.chain.append(
            outcome=outcome,
            event_id=envelope.id,
            publisher=envelope.institution,
            event_type=envelope.type,
            payload_sha256=None,
            subscribers=[self.subscriber],
            reason=f"status={status or 0} attempts={attempts} latency_ms={latency_ms}",
        )
        self._receipts.append((key, value))

    async def _send_receipts(self) -> None:
        """This flush's receipts in one batch per partition (a chain lives in one partition)."""
        receipts, self._receipts = self._receipts, []
        if not receipts:
            return
        partitions = sorted(await self.producer.partitions_for(topics.AUDIT))
        partition = DefaultPartitioner()(receipts[0][0], partitions, partitions)
        batch = self.producer.create_batch()
        for key, value in receipts:
            if batch.append(key=key, value=value, timestamp=None) is None:
                self._acks.append(
                    await self.producer.send_batch(batch, topics.AUDIT, partition=partition)
                )
                batch = self.producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        self._acks.append(await self.producer.send_batch(batch, topics.AUDIT, partition=partition))
