"""What the HTTP sink decides, as pure functions: request shape, retry policy, circuit breaker.

No I/O here: the sink (``connectors.http_sink.sink``) does the sending and calls these.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Literal

from connectors.gateway.govesb import UnportableReply, signed_reply
from streams.contract.envelope import Envelope
from streams.contract.signing import PrivateKey

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
Verdict = Literal["delivered", "retry", "dead-letter"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One delivery attempt's request: body bytes and headers (auth added by the sink)."""

    body: bytes
    headers: dict[str, str]


def sign_body(envelope: Envelope, body: bytes, key: PrivateKey, key_id: str) -> Envelope:
    """The envelope carrying the bus's signature over ``body`` (canonical bytes over id,
    source, type, time and the body's SHA-256), as the pipeline signs HTTP deliveries."""
    return envelope.sealed(key_id, key, body)


def cloudevents_request(envelope: Envelope, body: bytes, subscription: str) -> HttpRequest:
    """CloudEvents HTTP binary mode: attributes as ``ce-*`` headers, the data as JSON.

    ``envelope`` carries the bus's signature over the exact ``body`` bytes (see
    :func:`sign_body`), so a receiver verifies what it received, not the Avro it never saw.
    """
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": envelope.id,
        "ce-source": envelope.source,
        "ce-type": envelope.type,
        "ce-time": envelope.time,
        "ce-subject": envelope.subject,
        "ce-sigkeyid": envelope.sig_key_id or "",
        "ce-signature": envelope.signature or "",
        "ce-esbsubscription": subscription,
        "Idempotency-Key": envelope.id,
    }
    if envelope.correlation_id:
        headers["ce-correlationid"] = envelope.correlation_id
    return HttpRequest(body, headers)


def govesb_request(envelope: Envelope, body: bytes, push_code: str, key: PrivateKey) -> HttpRequest:
    """The GovESB push envelope ``{"data": {...}, "signature": ...}`` signed by the bus.

    ``body`` is the JSON of the event data, used verbatim as ``esbBody``. The signature
    (ECDSA/SHA-256, base64 DER) is over the exact UTF-8 bytes of the serialized ``data``
    object, which appear verbatim in the body, as GovESB clients expect.
    """
    data = b"".join((
        b'{"pushCode":', json.dumps(push_code, ensure_ascii=False).encode(),
        b',"requestId":', json.dumps(envelope.id).encode(),
        b',"esbBody":', body, b"}",
    ))  # fmt: skip
    signature = key.sign(data)
    return HttpRequest(
        b'{"data":' + data + b',"signature":"' + signature.encode() + b'"}',
        {
            "Content-Type": "application/json",
            "Idempotency-Key": envelope.id,
            "ce-id": envelope.id,
            "ce-type": envelope.type,
        },
    )


def is_late_answer(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> bool:
    """Whether a record of ``esb.reply.<requester>`` is an answer its caller no longer waits
    for (``esb_late``): those, and only those, are pushed to the requester's endpoint."""
    found = dict(reversed(list(headers)))
    return found.get("esb_late") == b"1" and found.get("esb_status") in (
        b"answered",
        b"provider-error",
    )


def govesb_answer_request(
    envelope: Envelope,
    body: bytes,
    status: str,
    message: str,
    key: PrivateKey,
) -> HttpRequest:
    """A late answer pushed to the requester, in the GovESB async form the providers' own
    ``/async`` call uses: ``{"data":{"success":…,"requestId":"<id>","esbBody":{…}[,"message":…]},
    "signature":…}``, signed by the bus over the exact ``data`` bytes. ``requestId`` is the
    request's id as the requester's GovESB answer gave it (32 hex digits)."""
    request_id = uuid.UUID(envelope.correlation_id or envelope.id).hex
    data: dict[str, object] = {
        "success": status == "answered",
        "requestId": request_id,
        "esbBody": json.loads(body) if body else {},
    }
    if message:
        data["message"] = message
    try:  # the one text every GovESB client re-serializes to itself (as the gateway's)
        signed = signed_reply(data, key).encode()
    except UnportableReply:  # a value no text verifies everywhere: signed as it came
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        signed = b'{"data":' + text + b',"signature":"' + key.sign(text).encode() + b'"}'
    return HttpRequest(
        signed,
        {
            "Content-Type": "application/json",
            "Idempotency-Key": envelope.id,
            "ce-id": envelope.id,
            "ce-type": envelope.type,
            "ce-correlationid": envelope.correlation_id or "",
        },
    )


def hmac_signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """``X-GovESB-Signature`` value: ``t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def basic_auth(username: str, password: str) -> str:
    """``Authorization`` value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def verdict(status: int | None) -> Verdict:
    """What a response means: ``None`` is a connection error or timeout."""
    if status is None or status in RETRYABLE_STATUS:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    return "dead-letter"


def retry_after_s(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; ``Retry-After`` wins when longer."""

    max_attempts: int = 8
    initial_s: float = 0.2
    max_s: float = 30.0

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        ceiling = min(self.max_s, self.initial_s * (2 ** (attempt - 1)))
        jittered = (rng or random).uniform(0, ceiling)
        return max(jittered, min(retry_after, self.max_s * 4) if retry_after else 0.0)


@dataclass
class CircuitBreaker:
    """Per endpoint: opens after ``threshold`` consecutive failures, half-opens after cooldown.

    While open the sink pauses consumption instead of spending attempts on a dead endpoint.
    """

    threshold: int = 5
    cooldown_s: float = 10.0
    failures: int = 0
    opened_at: float | None = None
    state: Literal["closed", "open", "half-open"] = field(default="closed")

    def allow(self, now: float) -> bool:
        """Whether a request may be sent now."""
        if self.state == "open" and self.opened_at is not None:
            if now - self.opened_at >= self.cooldown_s:
                self.state = "half-open"
                return True
            return False
        return True

    def wait_s(self, now: float) -> float:
        """Seconds until a request may be sent again (0 when allowed)."""
        if self.state != "open" or self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (now - self.opened_at))

    def record(self, success: bool, now: float) -> None:
        """Account one attempt's result."""
        if success:
            self.failures, self.state, self.opened_at = 0, "closed", None
            return
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.threshold:
            self.state, self.opened_at = "open", now
