"""The GovESB format as the public clients write and verify it (``connectors.gateway.govesb``)."""

from __future__ import annotations

import json

import pytest

from connectors.gateway.errors import HttpError
from connectors.gateway.govesb import (
    UnportableReply,
    declares_latin1,
    read_request,
    reply_text,
    signed_reply,
    token_in_data,
    without_token,
)
from deploy.worker import DEMO_BUS_KEY
from streams.contract.signing import load_private_key
from tests.corpus.govesb_clients import (
    NON_ASCII_NAME,
    connector_body,
    connector_data,
    java_hash_order,
    java_reprinted,
    java_verified_text,
    php_verified_text,
    python_verified_text,
)
from tests.corpus.malformed import citizen_json, demo_key

BUS = load_private_key(DEMO_BUS_KEY.read_text())
ASCII_REPLY = {
    "success": True,
    "requestId": "6475958642c911ec989ab747256646aa",
    "esbBody": {
        "eventId": "0b7c2a52-8d8f-4c55-a3c1-5b1e0d5c1f7a",
        "url": "https://nida.go.tz/a/b",  # "/" is never escaped by any client
        "amount": 284750000, "rate": 0.125, "whole": 100.0, "none": None, "flags": [True, False],
        "10": "array-index keys", "2": "come first, ascending, in JavaScript",
        "quote": 'a "quoted"\\ line\nand\ttab',
    },
    "message": "ok",
}  # fmt: skip


def _verifies(body: str, text: str) -> bool:
    return BUS.public_key().verify(text.encode(), json.loads(body)["signature"])


def test_an_ascii_reply_verifies_in_java_python_and_php_styles() -> None:
    body = signed_reply(ASCII_REPLY, BUS)
    assert body.startswith('{"data":{"success":true,"requestId":"6475958642c9')
    for verified_text in (java_verified_text, python_verified_text, php_verified_text):
        assert _verifies(body, verified_text(body)), verified_text.__name__
    assert '"esbBody":{"2":' in body  # JavaScript's own order for such keys
    assert '"whole":100,' in body  # Java would print 100.0 for 100.0, Node 100


def test_a_non_ascii_reply_is_raw_utf8_which_java_and_php_verify() -> None:
    body = signed_reply({"success": True, "esbBody": {"name": NON_ASCII_NAME}}, BUS)
    assert NON_ASCII_NAME in body
    assert _verifies(body, java_verified_text(body))
    assert _verifies(body, php_verified_text(body))
    # The documented exception: a Python client re-serializing with ASCII escapes.
    assert not _verifies(body, python_verified_text(body))


@pytest.mark.parametrize(
    "value",
    [2**53, -(2**53), 1e21, 1e-7, float("nan"), "bell\x07", "\ud800", {1: "x"}, b"bytes"],
)
def test_values_no_text_of_which_verifies_everywhere_are_refused(value: object) -> None:
    with pytest.raises(UnportableReply):
        reply_text({"esbBody": {"v": value}})


def test_connector_015_signs_utf8_and_sends_latin1_which_is_read_back_as_signed() -> None:
    nida = demo_key("nida")
    esb_body = citizen_json(lastName=NON_ASCII_NAME)
    text = connector_data(pushCode="tz.go.nida.CitizenRegistered", esbBody=esb_body)
    assert text.startswith('{"pushCode":"tz.go.nida.CitizenRegistered","esbBody":{"lastName":')
    body = connector_body(text, nida.sign(text.encode()))
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")  # é went out as the single byte 0xE9
    for charset in (None, "ISO-8859-1", "latin1"):
        signed = read_request(body, charset)
        assert signed.data_bytes == text.encode("utf-8")
        assert nida.public_key().verify(signed.data_bytes, signed.signature)
        assert signed.data["esbBody"]["lastName"] == NON_ASCII_NAME


def test_a_latin1_reading_that_does_not_verify_is_refused_as_the_body_says() -> None:
    text = connector_data(pushCode="x", esbBody={"lastName": NON_ASCII_NAME})
    other = demo_key("rita").sign(text.encode())  # well-formed, but not nida's
    for signature, undeclared_refusal in [
        (other, (401, "invalid_signature")),  # a signed ISO-8859-1 body that does not verify
        ("AAAA", (400, "invalid_json")),  # no signed request: a body that is not UTF-8
    ]:
        body = connector_body(text, signature)
        undeclared = read_request(body, None).unverified()
        declared = read_request(body, "ISO-8859-1").unverified()
        assert (undeclared.status, undeclared.code) == undeclared_refusal
        assert (declared.status, declared.code) == (401, "invalid_signature")
        utf8 = read_request(body.decode("latin-1").encode(), "utf-8").unverified()
        assert (utf8.status, utf8.code) == (401, "invalid_signature")


def test_the_token_inside_the_data_is_found_and_stripped() -> None:
    text = connector_data(apiCode="API1", userId="u", authorization="tok", esbBody={"a": 1})
    assert text == '{"apiCode":"API1","userId":"u","authorization":"tok","esbBody":{"a":1}}'
    data = json.loads(text)
    assert token_in_data(data) == "tok"
    assert token_in_data({**data, "authorization": "Bearer tok"}) == "tok"
    assert token_in_data({"pushCode": "x"}) is None
    assert "tok" not in json.dumps(without_token(data))
    with pytest.raises(HttpError) as refused:
        token_in_data({"authorization": 5})
    assert refused.value.field == "data.authorization"


def test_connector_015_hash_order_and_reprinted_numbers() -> None:
    # Checked against java.util.HashMap and BigDecimal(Double.toString(x)) on a JDK.
    keys = ["nin", "firstName", "middleName", "lastName", "dateOfBirth", "sex", "nationality",
            "region", "district", "ward", "phoneNumber", "registeredAt",
            "registrationOffice"]  # fmt: skip
    assert java_hash_order(keys)[:4] == ["lastName", "sex", "registrationOffice", "registeredAt"]
    assert [java_reprinted(x) for x in (1e7, 100.0, 1.2345678e9)] == [
        "1.0E+7", "100.0", "1.2345678E+9",
    ]  # fmt: skip
    text = connector_data(pushCode="x", esbBody={"amount": 1e7})
    assert text == '{"pushCode":"x","esbBody":{"amount":1.0E+7}}'
    assert read_request(connector_body(text, "AAAA"), None).data_bytes == text.encode()


@pytest.mark.parametrize(
    ("charset", "latin1"),
    [("ISO-8859-1", True), ("iso_8859_1", True), ("latin-1", True), ("utf-8", False),
     (None, False), ("x-klingon", False), ("windows-1252", False)],
)  # fmt: skip
def test_iso_8859_1_is_recognised_under_its_aliases(charset: str | None, latin1: bool) -> None:
    assert declares_latin1(charset) is latin1


def test_the_python_client_layout_is_cut_like_the_compact_one() -> None:
    text = json.dumps({"pushCode": "x", "esbBody": {"a": "b"}})  # json.dumps defaults
    body = json.dumps({"data": json.loads(text), "signature": "AAAA"}).encode()
    assert read_request(body, None).data_bytes == text.encode()
