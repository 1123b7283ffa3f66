"""Requests and answers through the pipeline, in process: routed with a ticket, refused with
a reason (and a refusal the caller can wait for), answers checked against their ticket and
minimised to the requester's grant."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from streams.audit.chain import AuditChain
from streams.contract import topics
from streams.contract.codec import encode
from streams.contract.envelope import new_envelope
from streams.contract.requests import (
    API_HEADER,
    STATUS_HEADER,
    TICKET_HEADERS,
    Ticket,
    TicketError,
    answer_id,
    header,
    read_ticket,
)
from streams.contract.signing import PrivateKey, canonical_bytes, load_private_key, sign_event
from streams.pipeline.exchange import RateGate
from streams.pipeline.process import BusKey, Outcome, Output, Pipeline
from streams.pipeline.validation import IngressRecord
from streams.registry.model import Grant
from streams.settings import REPO_ROOT
from tests.unit.pipeline_fixtures import (
    KEY_IDS,
    NOW,
    SCHEMA_IDS,
    SCHEMA_TYPES,
    OfflineSchemas,
    registry_view,
)

KEYS = REPO_ROOT / "deploy/demo-keys"
BUS_KEY = BusKey("ega-d06f8e0a5d19", load_private_key((KEYS / "ega.key.pem").read_text()))
GATEWAY_KEY = load_private_key((KEYS / "ega-gateway.key.pem").read_text())
KEY_IDS = {**KEY_IDS, "moh": "moh-563d2616bddc", "utumishi": "utumishi-b991186b7bdd"}
REQUEST, RESPONSE = "tz.go.nida.VerifyNinRequest", "tz.go.nida.VerifyNinResponse"
NIN = "19900114141010000125"
ANSWER = {
    "nin": NIN, "valid": True, "firstName": "Neema", "middleName": "Joseph",
    "lastName": "Mwakyusa", "dateOfBirth": "1990-01-14", "phoneNumber": "+255754123456",
    "alive": True,
}  # fmt: skip


def _key(institution: str) -> PrivateKey:
    return load_private_key((KEYS / f"{institution}.key.pem").read_text())


def _record(
    institution: str,
    type_name: str,
    payload: dict[str, Any] | None,
    *,
    request_id: str | None = None,
    correlation_id: str | None = None,
    extra: tuple[tuple[str, bytes], ...] = (),
    key_id: str | None = None,
    key: PrivateKey | None = None,
    time: dt.datetime = NOW,
    offset: int = 0,
    value_type: str | None = None,
) -> IngressRecord:
    value_type = value_type or type_name
    value = (
        encode(SCHEMA_IDS[value_type], SCHEMA_TYPES[value_type].parsed, payload)
        if payload is not None
        else b""
    )
    event_id = request_id or str(uuid.uuid4())
    envelope = new_envelope(
        institution, "test", type_name, correlation_id or event_id,
        event_id=event_id, correlation_id=correlation_id, time=time,
    )  # fmt: skip
    signature = sign_event(
        key or _key(institution), envelope.id, envelope.source, envelope.type, envelope.time,
        value,
    )  # fmt: skip
    signed = envelope.signed(key_id or KEY_IDS[institution], signature)
    return IngressRecord(
        topics.ingress(institution), 0, offset, signed.subject.encode(), value or None,
        (*signed.to_headers(), *extra),
    )  # fmt: skip


def _pipeline() -> Pipeline:
    return Pipeline(registry_view(), OfflineSchemas(), BUS_KEY, AuditChain("test"))


def _only(outcome: Outcome, topic: str) -> Output:
    found = [o for o in outcome.outputs if o.topic == topic]
    assert len(found) == 1, [o.topic for o in outcome.outputs]
    return found[0]


def _headers(output: Output) -> dict[str, str]:
    return {k: v.decode() for k, v in output.headers}


def _answer_to(routed: Output, payload: dict[str, Any] | None, **options: Any) -> IngressRecord:
    """nida's answer to a routed request, carrying its ticket."""
    request_id = _headers(routed)["ce_id"]
    ticket = tuple((k, v) for k, v in routed.headers if k in TICKET_HEADERS)
    return _record(
        "nida", RESPONSE, payload, request_id=options.pop("answer_id", answer_id(request_id)),
        correlation_id=options.pop("correlation_id", request_id),
        extra=options.pop("extra", ticket), **options,
    )  # fmt: skip


async def _route(pipeline: Pipeline, requester: str = "tra", **options: Any) -> Outcome:
    return await pipeline.handle(_record(requester, REQUEST, {"nin": NIN}, **options), NOW)


async def test_a_request_is_routed_to_the_provider_re_signed_with_a_ticket() -> None:
    pipeline = _pipeline()
    outcome = await _route(pipeline)
    assert outcome.reason is None
    assert outcome.call == "routed"
    assert outcome.api == "VERIFY_NIN"
    routed = _only(outcome, "esb.request.nida")
    headers = _headers(routed)
    assert headers["ce_sigkeyid"] == BUS_KEY.key_id
    assert headers["esb_api"] == "VERIFY_NIN"
    assert headers["esb_requester"] == "tra"
    assert headers["ce_source"] == "/institutions/tra/systems/test"
    ticket = read_ticket(routed.headers, pipeline.view.keyring, [BUS_KEY.key_id])
    assert (ticket.requester, ticket.provider, ticket.api_code) == ("tra", "nida", "VERIFY_NIN")
    assert ticket.request_id == headers["ce_id"]
    assert ticket.deadline_ms == NOW.timestamp() * 1000 + 10_000  # the service's deadline_s
    assert ticket.until_ms == ticket.deadline_ms + 3_600_000  # and its late_answers_s
    # VERIFY_NIN takes late answers over HTTP: the gateway finds the ticket on esb.tickets.
    assert _only(outcome, topics.TICKETS).key == routed.key == ticket.request_id.encode()
    audit = json.loads(_only(outcome, topics.AUDIT).value or b"")
    assert audit["outcome"] == "requested"
    assert audit["subscription"] == "tra-verify-nin"


async def test_a_forged_or_altered_ticket_is_not_the_bus_s() -> None:
    pipeline = _pipeline()
    routed = _only(await _route(pipeline), "esb.request.nida")
    text, signature, key_id = (header(routed.headers, n) for n in TICKET_HEADERS)
    assert text
    assert signature
    assert key_id
    other = json.loads(text) | {"requester": "moh"}
    altered = [(TICKET_HEADERS[0], json.dumps(other).encode()), (TICKET_HEADERS[1], signature),
               (TICKET_HEADERS[2], key_id)]  # fmt: skip
    with pytest.raises(TicketError, match="does not verify"):
        read_ticket(altered, pipeline.view.keyring, [BUS_KEY.key_id])
    forged = Ticket("moh", "nida", "VERIFY_NIN", "x", 0, 2**40).headers(
        KEY_IDS["nida"], _key("nida")
    )
    with pytest.raises(TicketError, match="not a key of the bus"):
        read_ticket(forged, pipeline.view.keyring, [BUS_KEY.key_id])


@pytest.mark.parametrize(
    ("requester", "change", "reason"),
    [
        ("utumishi", {}, "no-grant"),  # utumishi has no grant for VERIFY_NIN
        ("tra", {"extra": ((API_HEADER, b"NO_SUCH_API"),)}, "invalid-header"),
        ("tra", {"key": "rita"}, "bad-signature"),
        # a value of another record (the answer's) under the request's type
        ("tra", {"payload": ANSWER, "value_type": RESPONSE}, "schema-mismatch"),
    ],
)
async def test_a_request_breaking_the_contract_is_refused_with_its_reason(
    requester: str, change: dict[str, Any], reason: str
) -> None:
    pipeline = _pipeline()
    payload = change.pop("payload", {"nin": NIN})
    if "key" in change:
        change["key"] = _key(change["key"])
    record = _record(requester, REQUEST, payload, **change)
    outcome = await pipeline.handle(record, NOW)
    assert str(outcome.reason) == reason
    assert outcome.call == "refused"
    assert _headers(_only(outcome, topics.rejected(requester)))["esb_reason"] == reason
    replies = [o for o in outcome.outputs if o.topic.startswith("esb.reply.")]
    if requester == "tra":  # tra has grants, so a reply topic: its caller learns at once
        refusal = _headers(replies[0])
        assert refusal["esb_status"] == "refused"
        assert refusal["esb_reason"] == reason
        assert refusal["ce_correlationid"] == _headers(record)["ce_id"]
    else:
        assert replies == []


async def test_an_api_code_nobody_serves_is_refused_as_unknown_api() -> None:
    record = _record("tra", "tz.go.nida.VerifyNinRequest", {"nin": NIN},
                     extra=((API_HEADER, b"VERIFY_NIN"),))  # fmt: skip
    pipeline = _pipeline()
    pipeline.view.apply("service/VERIFY_NIN", None)
    pipeline.view.apply("service/TIN_STATUS", pipeline.view.raw["service/TIN_STATUS"])
    outcome = await pipeline.handle(record, NOW)
    assert str(outcome.reason) == "unknown-api"
    assert _headers(_only(outcome, "esb.reply.tra"))["esb_reason"] == "unknown-api"


async def test_a_requester_over_its_grant_s_rate_is_refused() -> None:
    gate = RateGate()
    grant = Grant(id="tra-g", consumer="tra", api_code="VERIFY_NIN", fields=["nin"], rate_per_s=2)
    assert [gate.admit(grant, 100.0) for _ in range(3)] == [True, True, False]
    assert gate.admit(grant, 100.5)  # half a second later: one more token
    pipeline = _pipeline()
    reasons = [str((await _route(pipeline, offset=n)).reason) for n in range(102)]
    assert reasons.count("None") == 100
    assert reasons[-2:] == ["rate-exceeded"] * 2


async def test_the_answer_reaches_the_requester_minimised_masked_and_re_signed() -> None:
    pipeline = _pipeline()
    routed = _only(await _route(pipeline), "esb.request.nida")
    outcome = await pipeline.handle(_answer_to(routed, ANSWER), NOW + dt.timedelta(seconds=1))
    assert outcome.reason is None
    assert outcome.call == "answered"
    assert outcome.round_trip_s == pytest.approx(1.0)
    reply = _only(outcome, "esb.reply.tra")
    headers = _headers(reply)
    assert headers["ce_sigkeyid"] == BUS_KEY.key_id
    assert headers["esb_status"] == "answered"
    assert headers["ce_correlationid"] == _headers(routed)["ce_id"] == (reply.key or b"").decode()
    assert "esb_late" not in headers
    # tra-verify-nin: nin, valid, firstName, lastName, phoneNumber (masked), alive
    assert json.loads(reply.value or b"") == {
        "nin": NIN, "valid": True, "firstName": "Neema", "lastName": "Mwakyusa",
        "phoneNumber": "*********3456", "alive": True,
    }  # fmt: skip
    assert BUS_KEY.key.public_key().verify(
        canonical_bytes(
            headers["ce_id"], headers["ce_source"], headers["ce_type"], headers["ce_time"],
            reply.value or b"",
        ),
        headers["ce_signature"],
    )  # fmt: skip


async def test_a_second_answer_to_the_same_request_is_a_duplicate() -> None:
    pipeline = _pipeline()
    routed = _only(await _route(pipeline), "esb.request.nida")
    first = await pipeline.handle(_answer_to(routed, ANSWER, offset=1), NOW)
    again = await pipeline.handle(_answer_to(routed, ANSWER, offset=2), NOW)
    assert first.reason is None
    assert str(again.reason) == "duplicate"
    # ... and an answer under any other id is not this request's answer (ids are bound)
    other = await pipeline.handle(
        _answer_to(routed, ANSWER, offset=3, answer_id="6f2c4a8e-1b3d-4e5f-8a9b-0c1d2e3f4a5b"),
        NOW,
    )
    assert str(other.reason) == "invalid-header"


async def test_an_answer_without_the_request_s_ticket_or_for_another_is_refused() -> None:
    pipeline = _pipeline()
    routed = _only(await _route(pipeline), "esb.request.nida")
    other = _only(await _route(pipeline, requester="moh", offset=1), "esb.request.nida")
    cases = {
        "no ticket": _answer_to(routed, ANSWER, extra=()),
        "another request's ticket": _answer_to(
            routed, ANSWER, extra=tuple((k, v) for k, v in other.headers if k in TICKET_HEADERS)
        ),
    }
    for name, record in cases.items():
        outcome = await pipeline.handle(record, NOW)
        assert str(outcome.reason) == "bad-ticket", name
        assert [o.topic for o in outcome.outputs] == ["esb.rejected.nida", topics.AUDIT], name
    # tra cannot answer nida's service, even with a real ticket.
    ticket = tuple((k, v) for k, v in routed.headers if k in TICKET_HEADERS)
    request_id = _headers(routed)["ce_id"]
    outcome = await pipeline.handle(
        _record("tra", RESPONSE, ANSWER, request_id=answer_id(request_id),
                correlation_id=request_id, extra=ticket),
        NOW,
    )  # fmt: skip
    assert str(outcome.reason) == "not-owner"


async def test_late_answers_are_marked_and_too_late_ones_refused() -> None:
    pipeline = _pipeline()
    routed = _only(await _route(pipeline), "esb.request.nida")
    late = await pipeline.handle(_answer_to(routed, ANSWER), NOW + dt.timedelta(seconds=30))
    assert _headers(_only(late, "esb.reply.tra"))["esb_late"] == "1"
    routed = _only(await _route(pipeline, offset=1), "esb.request.nida")
    too_late = await pipeline.handle(_answer_to(routed, ANSWER), NOW + dt.timedelta(hours=2))
    assert str(too_late.reason) == "late-answer"


async def test_a_provider_error_is_passed_on_with_its_reason_and_message() -> None:
    pipeline = _pipeline()
    routed = _only(await _route(pipeline), "esb.request.nida")
    ticket = tuple((k, v) for k, v in routed.headers if k in TICKET_HEADERS)
    record = _answer_to(
        routed, None, key=GATEWAY_KEY, key_id="ega-811cb62f3e2d",
        extra=(*ticket, (STATUS_HEADER, b"provider-error"), ("esb_reason", b"provider-unavailable"),
               ("esb_message", b"connection refused after 3 attempts"), ("esb_via", b"gateway")),
    )  # fmt: skip
    view = pipeline.view
    view.gateway_keys = frozenset({"ega-811cb62f3e2d"})
    outcome = await pipeline.handle(record, NOW)
    assert outcome.call == "provider-error"
    reply = _headers(_only(outcome, "esb.reply.tra"))
    assert reply["esb_status"] == "provider-error"
    assert reply["esb_reason"] == "provider-unavailable"
    assert reply["esb_message"] == "connection refused after 3 attempts"


async def test_a_late_answer_follows_the_connector_s_error_at_the_deadline() -> None:
    """VERIFY_NIN takes late answers: the connector's provider-unavailable at the deadline is
    passed on, and the provider's answer through /engine/esb/async after it too."""
    pipeline = _pipeline()
    pipeline.view.gateway_keys = frozenset({"ega-811cb62f3e2d"})
    routed = _only(await _route(pipeline), "esb.request.nida")
    ticket = tuple((k, v) for k, v in routed.headers if k in TICKET_HEADERS)
    gave_up = _answer_to(
        routed, None, key=GATEWAY_KEY, key_id="ega-811cb62f3e2d", offset=1,
        extra=(*ticket, (STATUS_HEADER, b"provider-error"),
               ("esb_reason", b"provider-unavailable"), ("esb_via", b"gateway")),
    )  # fmt: skip
    late = _answer_to(
        routed, ANSWER, key=GATEWAY_KEY, key_id="ega-811cb62f3e2d", offset=2,
        extra=(*ticket, ("esb_via", b"gateway")),
    )  # fmt: skip
    first = await pipeline.handle(gave_up, NOW + dt.timedelta(seconds=10))
    second = await pipeline.handle(late, NOW + dt.timedelta(minutes=5))
    assert (first.call, second.call) == ("provider-error", "answered")
    assert _headers(_only(second, "esb.reply.tra"))["esb_late"] == "1"
    again = await pipeline.handle(_answer_to(routed, ANSWER, key=GATEWAY_KEY,
                                             key_id="ega-811cb62f3e2d", offset=3,
                                             extra=(*ticket, ("esb_via", b"gateway"))),
                                  NOW + dt.timedelta(minutes=6))  # fmt: skip
    assert str(again.reason) == "duplicate"  # one answer, still
