"""The gateway's request routes, their pure parts: answers read from esb.reply, what the
caller is sent, JSON requests against their schema, held calls and the ticket book."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from types import SimpleNamespace

import pytest

from connectors.gateway.app import GatewayMetrics
from connectors.gateway.calls import Answer, HeldCalls, ReplyReader, UnreadableAnswer, read_answer
from connectors.gateway.govesb import signed_reply
from connectors.gateway.replies import (
    SchemaViolation,
    answer_data,
    avro_record,
    refusal_data,
    request_payload,
    timed_out_data,
)
from connectors.gateway.requests import Refusal, RequestDesk
from connectors.gateway.tickets import TicketBook
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID, DEMO_GATEWAY_KEY, DEMO_GATEWAY_KEY_ID
from streams.contract.envelope import JSON_CONTENT_TYPE, Envelope, new_envelope
from streams.contract.requests import Status, Ticket, answer_id, govesb_request_id
from streams.contract.signing import KeyRing, load_private_key, sign_event
from streams.settings import KafkaSettings
from tests.corpus.govesb_clients import (
    NON_ASCII_NAME,
    java_verified_text,
    php_verified_text,
    python_verified_text,
)
from tests.unit.pipeline_fixtures import CATALOG, registry_view

BUS = load_private_key(DEMO_BUS_KEY.read_text())
GATEWAY = load_private_key(DEMO_GATEWAY_KEY.read_text())
RING = KeyRing()
RING.add(DEMO_BUS_KEY_ID, BUS.public_key())
RING.add(DEMO_GATEWAY_KEY_ID, GATEWAY.public_key())
BUS_KEYS = {DEMO_BUS_KEY_ID}
VERIFY_NIN = CATALOG.services["VERIFY_NIN"]


def _reply_record(
    request_id: str,
    value: bytes | None,
    *,
    status: str = "answered",
    key: object = BUS,
    key_id: str = DEMO_BUS_KEY_ID,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> tuple[bytes, bytes | None, list[tuple[str, bytes | None]]]:
    """A record of esb.reply.<requester> as the pipeline writes an answer."""
    envelope = new_envelope(
        "nida", "nin-api", VERIFY_NIN.response.name, request_id,
        event_id=answer_id(request_id), correlation_id=request_id,
    )  # fmt: skip
    envelope = envelope.signed(
        key_id,
        sign_event(key, envelope.id, envelope.source, envelope.type, envelope.time, value or b""),
    )
    headers = [
        *envelope.signed_headers(envelope.sig_key_id, envelope.signature, JSON_CONTENT_TYPE),
        ("esb_api", b"VERIFY_NIN"),
        ("esb_status", status.encode()),
        *extra,
    ]
    return request_id.encode(), value, list(headers)


def test_an_answer_signed_by_the_bus_is_read_with_its_minimised_body() -> None:
    request_id = str(uuid.uuid4())
    body = {"nin": "19900114141010000125", "valid": True, "phoneNumber": "+255*******456"}
    answer = read_answer(*_reply_record(request_id, json.dumps(body).encode()), RING, BUS_KEYS)
    assert answer == Answer(request_id, Status.ANSWERED, body, api_code="VERIFY_NIN")


def test_an_answer_past_the_deadline_is_marked_late() -> None:
    request_id = str(uuid.uuid4())
    record = _reply_record(request_id, b'{"nin":"1"}', extra=(("esb_late", b"1"),))
    assert read_answer(*record, RING, BUS_KEYS).late is True


def test_a_provider_error_carries_its_reason_and_message() -> None:
    request_id = str(uuid.uuid4())
    record = _reply_record(
        request_id, None, status="provider-error",
        extra=(("esb_reason", b"provider-unavailable"), ("esb_message", b"HTTP 503 after 3")),
    )  # fmt: skip
    answer = read_answer(*record, RING, BUS_KEYS)
    assert (answer.status, answer.reason, answer.message, answer.body) == (
        Status.PROVIDER_ERROR, "provider-unavailable", "HTTP 503 after 3", None,
    )  # fmt: skip
    data = answer_data(answer, request_id)
    assert data == {
        "success": False,
        "requestId": govesb_request_id(request_id),
        "message": "provider-unavailable: HTTP 503 after 3",
    }


def test_the_bus_refusal_is_read_signed_and_says_why() -> None:
    from streams.contract.envelope import format_time
    from streams.contract.requests import refusal_id

    request_id = str(uuid.uuid4())
    envelope = Envelope(
        id=refusal_id(request_id), source="/institutions/ega/systems/govesb",
        type=VERIFY_NIN.request.name, time=format_time(dt.datetime.now(dt.UTC)),
        subject=request_id, correlation_id=request_id,
    )  # fmt: skip
    signature = sign_event(BUS, envelope.id, envelope.source, envelope.type, envelope.time, b"")
    headers: list[tuple[str, bytes | None]] = [
        *envelope.signed_headers(DEMO_BUS_KEY_ID, signature),
        ("esb_status", b"refused"),
        ("esb_reason", b"no-grant"),
        ("esb_detail", b"brela has no grant for VERIFY_NIN"),
    ]
    answer = read_answer(request_id.encode(), None, headers, RING, BUS_KEYS)
    assert answer_data(answer, request_id)["message"] == (
        "no-grant: brela has no grant for VERIFY_NIN"
    )
    unsigned = [h for h in headers if h[0] not in ("ce_signature", "ce_sigkeyid")]
    with pytest.raises(UnreadableAnswer):  # anyone could write that one
        read_answer(request_id.encode(), None, unsigned, RING, BUS_KEYS)
    relabelled = [(k, v) if k != "ce_correlationid" else (k, str(uuid.uuid4()).encode())
                  for k, v in headers]  # fmt: skip
    with pytest.raises(UnreadableAnswer, match="ce_id"):  # bound to its own request
        read_answer(None, None, relabelled, RING, BUS_KEYS)


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (lambda rid: _reply_record(rid, b'{"nin":"1"}', key=GATEWAY,
                                   key_id=DEMO_GATEWAY_KEY_ID), "not a key of the bus"),
        (lambda rid: (lambda k, v, h: (k, b'{"nin":"2"}', h))(*_reply_record(rid, b'{"nin":"1"}')),
         "does not verify"),
        (lambda rid: _reply_record(rid, b"not json"), "not JSON"),
        (lambda rid: _reply_record(rid, b"{}", status="maybe"), "none the contract knows"),
        (lambda rid: (None, b"{}", []), "answers no request"),
    ],
    ids=["gateway-key", "tampered", "not-json", "unknown-status", "no-request-id"],
)  # fmt: skip
def test_a_record_the_bus_did_not_sign_or_cannot_be_read_answers_no_call(
    record: object, why: str
) -> None:
    with pytest.raises(UnreadableAnswer, match=why):
        read_answer(*record(str(uuid.uuid4())), RING, BUS_KEYS)


def test_every_reply_the_caller_gets_verifies_in_every_client_style() -> None:
    request_id = str(uuid.uuid4())
    shown = govesb_request_id(request_id)
    answered = Answer(request_id, Status.ANSWERED, {"nin": "1", "firstName": NON_ASCII_NAME,
                                                    "valid": True, "alive": None})  # fmt: skip
    datas = [
        answer_data(answered, request_id),
        timed_out_data(request_id, 10.0),
        refusal_data("unknown-api", "no service has api code 'NOPE'", None),
    ]
    assert datas[0] == {"success": True, "requestId": shown, "esbBody": answered.body}
    assert datas[1] == {
        "success": False,
        "requestId": shown,
        "message": f"timed-out: no answer to request {shown} within 10 s",
    }
    assert len(shown) == 32
    assert "-" not in shown
    for data in datas:
        reply = signed_reply(data, GATEWAY)
        assert reply.startswith('{"data":{"success":')
        signature = json.loads(reply)["signature"]
        styles = [java_verified_text, php_verified_text]
        if data is not datas[0]:  # ASCII only: the Python style verifies it too
            styles.append(python_verified_text)
        for style in styles:
            assert GATEWAY.public_key().verify(style(reply).encode(), signature), style.__name__


def test_a_request_is_validated_against_the_service_request_record() -> None:
    assert avro_record(VERIFY_NIN.request, {"nin": "19900114141010000125"}, "esbBody") == {
        "nin": "19900114141010000125"
    }
    with pytest.raises(SchemaViolation, match=r"^esbBody\.nin: expected string$") as raised:
        avro_record(VERIFY_NIN.request, {"nin": 19900114141010000125}, "esbBody")
    assert "19900114141010000125" not in str(raised.value)  # never the value
    with pytest.raises(SchemaViolation, match="esbBody is required"):
        avro_record(VERIFY_NIN.request, None, "esbBody")


def test_the_nida_wrapper_is_unwrapped_only_on_the_nida_route() -> None:
    data = {"apiCode": "VERIFY_NIN", "userId": "officer-7", "esbBody": {"Payload": {"nin": "1"}}}
    assert request_payload(data, nida=True) == {"nin": "1"}
    assert request_payload(data, nida=False) == {"Payload": {"nin": "1"}}
    plain = {"apiCode": "VERIFY_NIN", "esbBody": {"nin": "1"}}
    assert request_payload(plain, nida=True) == {"nin": "1"}


async def test_a_held_call_is_answered_once_and_only_if_held() -> None:
    calls = HeldCalls()
    held, other = str(uuid.uuid4()), str(uuid.uuid4())
    future = calls.hold(held)
    assert len(calls) == 1
    assert calls.resolve(Answer(other, Status.ANSWERED, {})) is False  # another replica's
    assert calls.resolve(Answer(held, Status.ANSWERED, {"nin": "1"})) is True
    assert calls.resolve(Answer(held, Status.ANSWERED, {"nin": "2"})) is False  # a second one
    assert (await asyncio.wait_for(future, 1)).body == {"nin": "1"}
    calls.release(held)
    assert len(calls) == 0


def _ticket(request_id: str, until_ms: int) -> tuple[tuple[str, bytes], ...]:
    ticket = Ticket("tra", "nida", "VERIFY_NIN", request_id, until_ms - 1000, until_ms)
    return ticket.headers(DEMO_BUS_KEY_ID, BUS)


def test_the_ticket_book_keeps_tickets_until_their_time_and_forgets_tombstones() -> None:
    book = TicketBook(KafkaSettings())
    now_ms = int(time.time() * 1000)
    live, as_json, expired = (str(uuid.uuid4()) for _ in range(3))
    book.apply(live.encode(), None, list(_ticket(live, now_ms + 60_000)))
    document = {name: raw.decode() for name, raw in _ticket(as_json, now_ms + 60_000)}
    book.apply(as_json.encode(), json.dumps(document).encode(), [])
    book.apply(expired.encode(), None, list(_ticket(expired, now_ms - 1)))
    stored = dict(book.get(live) or ())
    assert json.loads(stored["esb_ticket"])["request_id"] == live
    assert stored["esb_ticket_key"] == DEMO_BUS_KEY_ID.encode()
    assert book.get(as_json) is not None
    assert book.get(expired) is None
    assert len(book) == 2
    book.apply(live.encode(), None, [])  # tombstone
    book.apply(as_json.encode(), b"not json", [])  # unreadable: no ticket
    assert (book.get(live), book.get(as_json), len(book)) == (None, None, 0)


def _desk() -> RequestDesk:
    """A request desk over the example registry, without Kafka (nothing here produces)."""
    gateway = SimpleNamespace(metrics=GatewayMetrics(), bus_key=GATEWAY, bus_key_id="x")
    view = registry_view()
    reader = ReplyReader(KafkaSettings(), view, HeldCalls(), DEMO_GATEWAY_KEY_ID)
    return RequestDesk(gateway, reader, TicketBook(KafkaSettings()))  # type: ignore[arg-type]


async def test_a_grant_takes_one_second_worth_of_requests_at_once_then_refuses() -> None:
    desk = _desk()
    grant = registry_view().grants["brela-tin-status"]  # 50 a second
    for _ in range(50):
        await desk._admit(grant)
    with pytest.raises(Refusal) as refused:
        await desk._admit(grant)
    assert refused.value.reason == "rate-exceeded"
    assert refused.value.detail == "brela may make 50 requests a second to TIN_STATUS"


def test_a_refusal_no_client_could_verify_is_sent_with_its_reason_alone() -> None:
    desk = _desk()
    response = desk._reply(refusal_data("invalid-payload", "esbBody.\x01: expected string", None))
    reply = response.text or ""
    assert json.loads(reply)["data"] == {"success": False, "message": "invalid-payload"}
    signature = json.loads(reply)["signature"]
    assert GATEWAY.public_key().verify(python_verified_text(reply).encode(), signature)


def test_the_nida_helpers_payload_wrapper_and_key_are_read() -> None:
    from connectors.gateway.replies import request_payload

    nin = "19900114141010000125"
    assert request_payload({"esbBody": {"Payload": {"NIN": nin}}}, nida=True) == {"nin": nin}
    assert request_payload({"esbBody": {"Payload": {"nin": nin}}}, nida=True) == {"nin": nin}
    assert request_payload({"esbBody": {"nin": nin}}, nida=False) == {"nin": nin}
