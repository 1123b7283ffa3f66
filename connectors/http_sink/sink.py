"""The HTTP sink: ``esb.deliver.<subscriber>`` to the subscriber's legacy HTTP endpoint.

One consumer group per subscriber endpoint. Records of one key are delivered in order, keys
in parallel (bounded). Timeouts, connection errors, 408/425/429 (``Retry-After`` honoured) and
5xx are retried with exponential backoff and jitter; other 4xx, 3xx (no redirect is followed,
see :mod:`connectors.http_sink.transport`), and records whose attempts are spent, go to
``esb.dlq.<subscriber>`` with the error. A partition's offset is committed only after every
record fetched from it was delivered or dead-lettered; while its records wait, the partition
is paused and the consumer keeps polling (:mod:`connectors.http_sink.flow`). A circuit
breaker per endpoint pauses consumption while the endpoint is down instead of spending
attempts: once open, nothing is sent until its cooldown has passed, then a single trial
request (half-open) closes it again or reopens it; attempts made while the breaker is not
closed are not counted against a record. An OAuth2 token endpoint that is unreachable or
answers 408/425/429/5xx counts as the endpoint failing (the breaker hears of it; the record's
attempts do not): records wait for a token rather than being dead-lettered. An Avro delivery
whose schema is not cached waits (that key only) while the schema registry is unavailable.
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
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from connectors.http_sink.delivery import (
    CircuitBreaker,
    HttpRequest,
    RetryPolicy,
    Verdict,
    basic_auth,
    cloudevents_request,
    govesb_answer_request,
    govesb_request,
    hmac_signature,
    is_late_answer,
    retry_after_s,
    sign_body,
    verdict,
)
from connectors.http_sink.metrics import BREAKER_STATES, SinkMetrics
from connectors.http_sink.transport import (
    TokenUnavailableError,
    excerpt,
    fetch_token,
    read_capped,
)
from streams.audit.chain import AuditChain
from streams.contract import topics
from streams.contract.codec import RegistryUnavailableError, SchemaStore
from streams.contract.envelope import CONTENT_TYPE, JSON_CONTENT_TYPE, Envelope, parse_time
from streams.contract.jsonavro import to_json_bytes
from streams.contract.reasons import EventError
from streams.contract.signing import PrivateKey
from streams.contract.tracecontext import TRACEPARENT, TRACESTATE, TraceParent, contexts
from streams.registry.model import Endpoint
from streams.retrying import until_available
from streams.tracing import Hop, SpanKind, Tracing

log = logging.getLogger(__name__)
DELIVERY_CONTENT_TYPES = (JSON_CONTENT_TYPE, CONTENT_TYPE)
REPLY_PREFIX = topics.reply("")  # esb.reply.<requester>: late answers are pushed too


@dataclass
class Credentials:
    """Secrets for the endpoint's auth, resolved from the sink's settings (never logged)."""

    secret: str | None = None
    username: str | None = None


@dataclass
class _Flush:
    """What one flush waits for before its offsets may move on: dead letters and receipts."""

    acks: list[asyncio.Future[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One attempt's result. ``breaker``: what it tells the circuit breaker (``None``:
    nothing); ``counts``: whether it is spent against the record's attempts."""

    outcome: Verdict
    status: int | None
    error: str
    retry_after: float | None = None
    breaker: bool | None = True
    counts: bool = True


@dataclass
class HttpSink:
    """Delivers deliver-topic records to one endpoint: ``add`` then ``flush``, ``close``.

    Records are queued per topic partition: ``flush(partition)`` delivers one partition's
    records while others are flushed concurrently (the consumer loop pauses a partition
    whose flush waits, see :mod:`connectors.http_sink.flow`).
    """

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
    max_response_bytes: int = 65_536
    metrics: SinkMetrics = field(default_factory=SinkMetrics)
    ssl_context: ssl.SSLContext | None = None
    tracing: Tracing = field(default_factory=Tracing)
    _pending: dict[
        TopicPartition, OrderedDict[bytes | None, list[ConsumerRecord[bytes, bytes]]]
    ] = field(default_factory=dict)
    _limit: asyncio.Semaphore | None = None
    _receipts: list[tuple[bytes, bytes]] = field(default_factory=list)
    _receipt_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _receipt_acks: list[asyncio.Future[Any]] = field(default_factory=list)
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
        """Queue a record; records of one key keep their order.

        Of ``esb.reply.<subscriber>`` only late answers are queued: the caller got the answer
        it waited for from the gateway or the SDK; the others are passed over (and committed).
        """
        if record.topic.startswith(REPLY_PREFIX) and not is_late_answer(record.headers):
            return
        partition = TopicPartition(record.topic, record.partition)
        self._pending.setdefault(partition, OrderedDict()).setdefault(record.key, []).append(record)

    async def flush(self, partition: TopicPartition | None = None) -> None:
        """Deliver or dead-letter what is queued (of ``partition`` only, when given); return
        when all of it is done and its dead letters and receipts are acknowledged."""
        if partition is None:
            pending, self._pending = list(self._pending.values()), {}
        else:
            found = self._pending.pop(partition, None)
            pending = [found] if found is not None else []
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.concurrency)
        limit = self._limit
        batch = _Flush()

        async def one_key(records: list[ConsumerRecord[bytes, bytes]]) -> None:
            async with limit:
                for record in records:
                    await self._deliver(record, batch)

        await asyncio.gather(*(one_key(rs) for keys in pending for rs in keys.values()))
        # Shielded: receipts taken off the queue are sent even if this flush is cancelled (a
        # stop or a rebalance), or the audit chain would miss links.
        batch.acks.extend(await asyncio.shield(self._send_receipts()))
        # Dead letters and receipts must be acknowledged before the offsets move on.
        await asyncio.gather(*batch.acks)

    async def close(self) -> None:
        """Nothing buffered is dropped: flush, then release the HTTP session."""
        await self.flush()
        await self.session.close()

    def request_for(
        self,
        envelope: Envelope,
        body: bytes,
        agreement: str,
        *,
        answer: tuple[str, str] | None = None,
    ) -> HttpRequest:
        """The request for one delivery, with the auth headers that do not change between
        attempts (bearer, basic); HMAC and OAuth2 headers are made per attempt.

        ``envelope`` carries the bus's signature over ``body`` (the CloudEvents form uses it;
        the GovESB form is signed over its ``data`` bytes here). ``answer``: the status and
        message of a late answer to one of the subscriber's requests (GovESB's async form).
        """
        if answer is not None and self.endpoint.format == "govesb":
            request = govesb_answer_request(envelope, body, *answer, self.bus_key)
        elif self.endpoint.format == "govesb":
            request = govesb_request(envelope, body, agreement, self.bus_key)
        else:
            request = cloudevents_request(envelope, body, agreement)
        auth = self.endpoint.auth
        secret = self.credentials.secret or ""
        if auth.type == "bearer":
            request.headers["Authorization"] = f"Bearer {secret}"
        elif auth.type == "basic":
            request.headers["Authorization"] = basic_auth(auth.username or "", secret)
        return request

    async def attempt_headers(self, request: HttpRequest) -> dict[str, str]:
        """The headers of one attempt: an HMAC signature with this attempt's timestamp (a
        receiver refusing stale timestamps accepts a late retry), the current OAuth2 token.

        Raises:
            TokenUnavailableError: OAuth2 and no token could be had.
        """
        auth = self.endpoint.auth
        if auth.type == "hmac":
            secret = (self.credentials.secret or "").encode()
            signature = hmac_signature(secret, request.body, int(time.time()))
            return {**request.headers, "X-GovESB-Signature": signature}
        if auth.type == "oauth2":
            return {**request.headers, "Authorization": f"Bearer {await self._oauth_token()}"}
        return request.headers

    async def _rendered(self, envelope: Envelope, value: bytes) -> tuple[Envelope, bytes]:
        """An Avro delivery (a Kafka agreement's record) decoded, rendered as JSON and
        signed here, with the envelope signed over that body."""
        body = to_json_bytes((await self.schemas.decode(value)).record)
        return sign_body(envelope, body, self.bus_key, self.bus_key_id), body

    async def _deliver(self, record: ConsumerRecord[bytes, bytes], batch: _Flush) -> None:
        """Deliver one record (or dead-letter it) as one hop of its event's trace: the
        endpoint gets ``traceparent`` (the sink's hop, the same for every attempt) and, in
        CloudEvents form, the event's creation context as ``ce-traceparent``."""
        written, creation = contexts(record.headers)
        hop = self.tracing.start(
            f"deliver {record.topic}", written or creation, SpanKind.CLIENT,
            {"messaging.system": "kafka", "messaging.destination.name": record.topic,
             "govesb.subscriber": self.subscriber},
            creation=creation,
        )  # fmt: skip
        try:
            outcome = await self._deliver_as(record, batch, hop, creation or hop.context)
        except BaseException as error:
            hop.end(error=type(error).__name__)
            raise
        hop.end(error=None if outcome == "delivered" else outcome)

    def trace_headers(self, hop: TraceParent, creation: TraceParent) -> dict[str, str]:
        """The trace headers of a request: W3C ``traceparent``/``tracestate`` (this hop), and
        for CloudEvents HTTP binary mode the distributed-tracing extension (the creation)."""
        headers = {TRACEPARENT: hop.header()}
        if hop.state:
            headers[TRACESTATE] = hop.state
        if self.endpoint.format != "govesb":
            headers["ce-traceparent"] = creation.header()
            if creation.state:
                headers["ce-tracestate"] = creation.state
        return headers

    async def _deliver_as(
        self,
        record: ConsumerRecord[bytes, bytes],
        batch: _Flush,
        hop: Hop,
        creation: TraceParent,
    ) -> str:
        try:
            envelope = Envelope.from_headers(record.headers, accept=DELIVERY_CONTENT_TYPES)
            body = record.value or b""
            # The pipeline renders and signs HTTP agreements' bodies: those bytes go out
            # unchanged. An Avro delivery whose schema this process has not cached yet waits
            # for the registry (this key only; other keys go on), and is never given up.
            if envelope.content_type != JSON_CONTENT_TYPE or not envelope.signature:
                envelope, body = await until_available(
                    lambda: self._rendered(envelope, body),
                    RegistryUnavailableError,
                    "schema registry",
                    log,
                )
        except EventError as error:
            await self._dead_letter(batch, record, None, 0, f"{error.reason}: {error.detail}")
            return "dead-lettered"
        agreement = next((v for k, v in record.headers if k == "esb_subscription"), b"").decode()
        answer = None
        if record.topic.startswith(REPLY_PREFIX):  # a late answer: pushed as GovESB's async
            found = dict(reversed(record.headers))
            answer = (
                found.get("esb_status", b"").decode(errors="replace"),
                found.get("esb_message", b"").decode(errors="replace"),
            )
        request = self.request_for(envelope, body, agreement, answer=answer)
        request.headers.update(self.trace_headers(hop.context, creation))
        hop.set({"cloudevents.event_id": envelope.id, "cloudevents.event_type": envelope.type})
        attempts = token_failures = 0
        renewed = False
        started = time.monotonic()
        while True:
            # The breaker closed (as it nearly always is): no wait, no trial.
            trial = None if self.breaker.state == "closed" else await self._admit()
            try:
                attempt = await self._attempt(request)
                if attempt.status == 401 and self.endpoint.auth.type == "oauth2" and not renewed:
                    # Expired or revoked: renew and send again (once; a 401 after a fresh
                    # token is the endpoint's answer).
                    attempts += 1 if trial is None else 0
                    self._token, renewed = None, True
                    continue
                if attempt.breaker is not None:
                    before = self.breaker.state
                    self.breaker.record(attempt.breaker, time.monotonic())
                    if self.breaker.state != before:
                        self._metric(self.metrics.breaker).set(BREAKER_STATES[self.breaker.state])
            finally:
                if trial is not None:
                    self._trial = None
                    trial.set_result(None)
            # A trial (the breaker half-open) that fails like the outage before it is not
            # counted, nor is an attempt the token endpoint failed (the record is not at fault);
            # a trial the endpoint answered for good (delivered, or refused) is an attempt.
            counted = trial is None or attempt.outcome != "retry"
            attempts += 1 if counted and attempt.counts else 0
            token_failures += 0 if attempt.counts else 1
            if attempt.outcome == "delivered":
                self._metric(self.metrics.deliveries, "delivered", str(attempt.status)).inc()
                self._metric(self.metrics.end_to_end).observe(
                    max(0.0, time.time() - parse_time(envelope.time).timestamp())
                )
                await self._receipt(
                    "delivered", envelope, attempt.status, attempts, started, agreement
                )
                hop.set(
                    {"http.response.status_code": attempt.status or 0, "govesb.attempts": attempts}
                )
                return "delivered"
            if attempt.outcome == "dead-letter" or attempts >= self.policy.max_attempts:
                await self._dead_letter(
                    batch, record, attempt.status, attempts, attempt.error, envelope, started
                )
                hop.set(
                    {"http.response.status_code": attempt.status or 0, "govesb.attempts": attempts}
                )
                return "dead-lettered"
            # One receipt per failed attempt, with its status: the event's trace shows it.
            await self._receipt("retrying", envelope, attempt.status, attempts, started, agreement)
            await asyncio.sleep(
                self.policy.delay(max(attempts, token_failures, 1), attempt.retry_after)
            )

    async def _admit(self) -> asyncio.Future[None] | None:
        """Wait until the breaker lets a request through; the trial's future when this
        request is the half-open trial (one at a time; the others wait for its result)."""
        while True:
            now = time.monotonic()
            wait = self.breaker.wait_s(now)
            if wait:
                await asyncio.sleep(wait)
                continue
            if self.breaker.state == "closed":
                return None
            if self._trial is not None:
                await asyncio.wait([self._trial])
                continue
            self.breaker.allow(now)  # open -> half-open: this request is the trial
            self._metric(self.metrics.breaker).set(BREAKER_STATES[self.breaker.state])
            self._trial = asyncio.get_running_loop().create_future()
            return self._trial

    async def _attempt(self, request: HttpRequest) -> _Attempt:
        try:
            headers = await self.attempt_headers(request)
        except TokenUnavailableError as error:
            if error.retryable:  # a failure of the endpoint's side, not of this record
                log.warning("no OAuth2 token for %s: %s", self.subscriber, error)
                return _Attempt("retry", None, str(error), breaker=False, counts=False)
            return _Attempt("dead-letter", None, str(error), breaker=None)
        status, retry_after, detail = await self._send(request, headers)
        outcome = verdict(status)
        return _Attempt(outcome, status, detail, retry_after, breaker=outcome != "retry")

    async def _oauth_token(self) -> str:
        """A cached OAuth2 client-credentials token, renewed a little before it expires.

        Raises:
            TokenUnavailableError: the token endpoint gave none.
        """
        async with self._token_lock:
            if self._token is not None and time.monotonic() < self._token[1]:
                return self._token[0]
            auth = self.endpoint.auth
            token, lifetime = await fetch_token(
                self.session,
                auth.token_url or "",
                auth.username or "",
                self.credentials.secret or "",
                client_timeout=self._timeout(),
                ssl_option=self.ssl_context or self.endpoint.verify_tls,
                max_body_bytes=self.max_response_bytes,
            )
            self._token = (token, time.monotonic() + max(1.0, lifetime * 0.9))
            return token

    def _timeout(self) -> aiohttp.ClientTimeout:
        """The endpoint's request timeout (the endpoint may change with the registry)."""
        if self._client_timeout.total != self.endpoint.timeout_s:
            self._client_timeout = aiohttp.ClientTimeout(total=self.endpoint.timeout_s)
        return self._client_timeout

    async def _send(
        self, request: HttpRequest, headers: dict[str, str]
    ) -> tuple[int | None, float | None, str]:
        started = time.monotonic()
        try:
            async with self.session.post(
                self.endpoint.url,
                data=request.body,
                headers=headers,
                timeout=self._timeout(),
                ssl=self.ssl_context or self.endpoint.verify_tls,  # True: default CA checks
                allow_redirects=False,  # see connectors.http_sink.transport
            ) as response:
                status = response.status
                # Read (up to the cap) even a 2xx's body, so the connection can be reused.
                content = await read_capped(response, self.max_response_bytes)
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
        return status, retry_after, "" if 200 <= status < 300 else excerpt(status, content)

    async def _dead_letter(
        self,
        batch: _Flush,
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
        batch.acks.append(
            await self.producer.send(
                topics.dlq(self.subscriber), record.value, key=record.key, headers=headers
            )
        )
        self._metric(self.metrics.dlq).inc()
        self._metric(self.metrics.deliveries, "dead-lettered", str(status or 0)).inc()
        if envelope is not None:
            agreement = next((v for k, v in record.headers if k == "esb_subscription"), b"")
            await self._receipt(
                "dead-lettered", envelope, status, attempts, started, agreement.decode()
            )

    async def _receipt(
        self,
        outcome: str,
        envelope: Envelope,
        status: int | None,
        attempts: int,
        started: float | None,
        agreement: str = "",
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
            subscription=agreement or None,  # the agreement it was delivered under
        )
        self._receipts.append((key, value))

    async def _send_receipts(self) -> list[asyncio.Future[Any]]:
        """The receipts queued so far, in one batch per partition (a chain lives in one
        partition), in the order they were chained: concurrent flushes send them one after
        the other. Returns every receipt batch not yet acknowledged, a flush's own among them.
        """
        async with self._receipt_lock:
            receipts, self._receipts = self._receipts, []
            self._receipt_acks = [ack for ack in self._receipt_acks if not ack.done()]
            if receipts:
                partitions = sorted(await self.producer.partitions_for(topics.AUDIT))
                partition = DefaultPartitioner()(receipts[0][0], partitions, partitions)
                batch = self.producer.create_batch()
                for key, value in receipts:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        self._receipt_acks.append(
                            await self.producer.send_batch(batch, topics.AUDIT, partition=partition)
                        )
                        batch = self.producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)
                self._receipt_acks.append(
                    await self.producer.send_batch(batch, topics.AUDIT, partition=partition)
                )
            return list(self._receipt_acks)
