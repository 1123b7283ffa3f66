"""The HTTP sink's decisions: retry or not, how long to wait, breaker, request shapes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import random

import pytest

from connectors.http_sink.delivery import (
    CircuitBreaker,
    RetryPolicy,
    cloudevents_request,
    govesb_request,
    hmac_signature,
    retry_after_s,
    sign_body,
    verdict,
)
from streams.contract.envelope import new_envelope
from streams.contract.jsonavro import to_json_bytes
from streams.contract.signing import KeyRing, load_private_key, verify_event
from streams.settings import REPO_ROOT

KEY = load_private_key((REPO_ROOT / "deploy/demo-keys/ega.key.pem").read_text())
ENVELOPE = new_envelope("rita", "crvs", "tz.go.rita.DeathRegistered", "2004518832")
PAYLOAD = {"entryNumber": "2004518832", "dateOfDeath": dt.date(2026, 11, 20)}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "delivered"), (204, "delivered"), (None, "retry"), (408, "retry"),
        (429, "retry"), (500, "retry"), (503, "retry"), (400, "dead-letter"),
        (401, "dead-letter"), (404, "dead-letter"), (422, "dead-letter"), (301, "dead-letter"),
    ],
)  # fmt: skip
def test_what_each_status_means(status: int | None, expected: str) -> None:
    assert verdict(status) == expected


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    assert retry_after_s("7", now) == 7.0
    assert retry_after_s("Fri, 27 Nov 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def test_backoff_grows_is_capped_jittered_and_yields_to_retry_after() -> None:
    policy = RetryPolicy(max_attempts=8, initial_s=0.2, max_s=5.0)
    rng = random.Random(7)  # noqa: S311 - reproducible jitter
    for attempt in range(1, 12):
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        ceiling = min(5.0, 0.2 * 2 ** (attempt - 1))
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spreads up to the ceiling
    assert policy.delay(1, retry_after=3.0, rng=rng) == 3.0


def test_the_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_s=10)
    for now in (0, 1):
        breaker.record(False, now)
    assert breaker.state == "closed"
    breaker.record(False, 2)
    assert breaker.state == "open"
    assert not breaker.allow(5)
    assert breaker.wait_s(5) == 7
    assert breaker.allow(12)
    assert breaker.state == "half-open"
    breaker.record(False, 12)  # the probe failed: open again
    assert breaker.state == "open"
    assert breaker.allow(23)
    breaker.record(True, 23)
    assert (breaker.state, breaker.failures) == ("closed", 0)


def test_a_cloudevents_request_is_signed_over_the_exact_body() -> None:
    body = to_json_bytes(PAYLOAD)
    envelope = sign_body(ENVELOPE, body, KEY, "ega-d06f8e0a5d19")
    request = cloudevents_request(envelope, body, "utumishi-deaths")
    assert request.body == body
    assert json.loads(request.body) == {"entryNumber": "2004518832", "dateOfDeath": "2026-11-20"}
    assert request.headers["Idempotency-Key"] == ENVELOPE.id
    ring = KeyRing()
    ring.add("ega-d06f8e0a5d19", KEY.public_key())
    headers = request.headers
    verify_event(ring, headers["ce-sigkeyid"], headers["ce-signature"], ENVELOPE.id,
                 ENVELOPE.source, ENVELOPE.type, ENVELOPE.time, request.body)  # fmt: skip


def test_a_govesb_push_is_signed_over_the_data_bytes_as_they_appear_in_the_body() -> None:
    request = govesb_request(ENVELOPE, to_json_bytes(PAYLOAD), "utumishi-deaths", KEY)
    text = request.body.decode()
    data = text[len('{"data":') : text.index(',"signature"')]
    signature = json.loads(text)["signature"]
    assert KEY.public_key().verify(data.encode(), signature)
    assert json.loads(data)["esbBody"]["dateOfDeath"] == "2026-11-20"
    assert json.loads(data)["pushCode"] == "utumishi-deaths"
    assert json.loads(data)["requestId"] == ENVELOPE.id


def test_the_hmac_header_covers_timestamp_and_body() -> None:
    header = hmac_signature(b"s3cret", b'{"a":1}', 1795000000)
    expected = hmac.new(b"s3cret", b'1795000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1795000000,v1={expected}"


def test_a_late_answer_is_pushed_in_govesb_s_async_form_signed_over_its_data() -> None:
    import json as _json

    from connectors.gateway.govesb import exact_data
    from connectors.http_sink.delivery import govesb_answer_request, is_late_answer
    from streams.contract.envelope import new_envelope
    from streams.contract.signing import generate_private_key

    key = generate_private_key()
    request_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    envelope = new_envelope("nida", "crvs", "tz.go.nida.VerifyNinResponse", request_id,
                            correlation_id=request_id)  # fmt: skip
    pushed = govesb_answer_request(envelope, b'{"nin":"1","valid":true}', "answered", "", key)
    text = pushed.body.decode()
    body = _json.loads(text)
    assert body["data"] == {
        "success": True, "requestId": "0f8fad5bd9cb469fa16570867728950e",
        "esbBody": {"nin": "1", "valid": True},
    }  # fmt: skip
    # Every GovESB client's way of verifying: the raw cut (PHP) and the compact form agree.
    data = exact_data(text)
    assert data == _json.dumps(body["data"], separators=(",", ":"))
    assert key.public_key().verify(data.encode(), body["signature"])
    failed = govesb_answer_request(envelope, b"", "provider-error", "NIDA is down", key)
    assert _json.loads(failed.body)["data"] == {
        "success": False, "requestId": "0f8fad5bd9cb469fa16570867728950e", "esbBody": {},
        "message": "NIDA is down",
    }  # fmt: skip
    assert is_late_answer([("esb_status", b"answered"), ("esb_late", b"1")])
    assert not is_late_answer([("esb_status", b"answered")])  # its caller got it
    assert not is_late_answer([("esb_status", b"refused"), ("esb_late", b"1")])
