"""The provider connector's GovESB provider format: what it sends, how it reads answers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from connectors.gateway.govesb import exact_data
from connectors.provider.exchange import provider_request, read_answer
from streams.client.answering import answer_event
from streams.contract import requests
from streams.contract.envelope import new_envelope
from streams.contract.reasons import Reason
from streams.contract.requests import Status
from streams.contract.signing import KeyRing, generate_private_key, verify_event

BUS = generate_private_key()
NIDA = generate_private_key()
OTHER = generate_private_key("secp256r1")
REQUEST_ID = "6475958642c9-11ec-989a-b747256646aa"


def signed(data: Any, key: Any, *, separators: tuple[str, str] = (",", ":")) -> bytes:
    text = json.dumps(data, separators=separators, ensure_ascii=False)
    return f'{{"data":{text},"signature":"{key.sign(text.encode())}"}}'.encode()


def test_the_request_is_in_provider_format_and_verifies_as_every_client_reads_it() -> None:
    request_id = requests.new_request_id()
    request = provider_request({"nin": "19900114141010000125"}, request_id, "VERIFY_NIN", BUS)
    text = request.body.decode()
    body = json.loads(text)
    assert list(body) == ["data", "signature"]
    assert body["data"] == {
        "esbBody": {"nin": "19900114141010000125"},
        "requestId": request_id.replace("-", ""),
        "apiCode": "VERIFY_NIN",
    }
    public = BUS.public_key()
    # PHP cuts the raw text; Python and Node re-serialize compactly: the same bytes.
    assert public.verify(exact_data(text).encode(), body["signature"])
    assert public.verify(json.dumps(body["data"], separators=(",", ":")).encode(),
                         body["signature"])  # fmt: skip
    assert request.headers["Content-Type"] == "application/json"


def test_a_signed_answer_is_read_with_its_body_and_message() -> None:
    answer = read_answer(
        signed({"success": True, "esbBody": {"nin": "1", "valid": True}, "message": "OK"}, NIDA),
        "utf-8",
        [OTHER.public_key(), NIDA.public_key()],
    )
    assert (answer.status, answer.body, answer.message) == (
        Status.ANSWERED, {"nin": "1", "valid": True}, "OK"
    )  # fmt: skip


def test_an_answer_written_with_python_default_separators_verifies_over_its_exact_bytes() -> None:
    raw = signed({"success": True, "esbBody": {"nin": "1"}}, NIDA, separators=(", ", ": "))
    assert read_answer(raw, None, [NIDA.public_key()]).status is Status.ANSWERED


def test_failures_have_the_reason_the_requester_is_told() -> None:
    keys = [NIDA.public_key()]
    failed = read_answer(
        signed({"esbBody": {}, "success": False, "message": "offline"}, NIDA), None, keys
    )
    assert (failed.status, failed.reason, failed.message) == (
        Status.PROVIDER_ERROR, Reason.PROVIDER_ERROR, "offline"
    )  # fmt: skip
    unsigned = read_answer(b'{"data":{"success":true,"esbBody":{}}}', None, keys)
    assert (unsigned.reason, unsigned.message) == (
        Reason.PROVIDER_SIGNATURE, "the answer is not signed"
    )  # fmt: skip
    other = read_answer(signed({"success": True, "esbBody": {}}, OTHER), None, keys)
    assert other.reason is Reason.PROVIDER_SIGNATURE
    tampered = signed({"success": True, "esbBody": {"valid": False}}, NIDA).replace(
        b"false", b"true"
    )
    assert read_answer(tampered, None, keys).reason is Reason.PROVIDER_SIGNATURE
    assert read_answer(b"<html>", None, keys).reason is Reason.INVALID_ANSWER
    assert read_answer(signed({"ok": 1}, NIDA), None, keys).reason is Reason.INVALID_ANSWER
    no_body = read_answer(signed({"success": True, "esbBody": [1]}, NIDA), None, keys)
    assert (no_body.reason, no_body.message) == (
        Reason.INVALID_ANSWER, "data.esbBody must be an object"
    )  # fmt: skip
    long = read_answer(signed({"success": False, "message": "x" * 1000}, NIDA), None, keys)
    assert len(long.message) == requests.MAX_MESSAGE


def test_the_answer_event_carries_the_contract_headers_and_a_verifiable_signature() -> None:
    request_id = requests.new_request_id()
    request = new_envelope("tra", "itax", "tz.go.nida.VerifyNinRequest", request_id,
                           event_id=request_id)  # fmt: skip
    ticket = [(name, f"{name}-value".encode()) for name in requests.TICKET_HEADERS]
    event = answer_event(
        request, [("ce_id", b"x"), *ticket], provider="nida", system="crvs",
        api_code="VERIFY_NIN", response_type="tz.go.nida.VerifyNinResponse",
        status=Status.PROVIDER_ERROR, value=b"", reason=Reason.PROVIDER_UNAVAILABLE,
        message="no answer", key_id="ega-gw", key=BUS, via_gateway=True,
        now=dt.datetime(2026, 12, 2, tzinfo=dt.UTC),
    )  # fmt: skip
    headers = {k: v.decode() for k, v in event.headers}
    assert (event.topic, event.key, event.value) == ("esb.ingress.nida", request_id.encode(), b"")
    assert headers["ce_id"] == requests.answer_id(request_id)
    assert headers["ce_correlationid"] == headers["ce_subject"] == request_id
    assert headers["ce_source"] == "/institutions/nida/systems/crvs"
    assert headers["ce_time"] == "2026-12-02T00:00:00.000Z"
    assert {n: headers[n] for n in requests.TICKET_HEADERS} == {
        n: f"{n}-value" for n in requests.TICKET_HEADERS
    }
    assert (headers["esb_status"], headers["esb_reason"], headers["esb_message"]) == (
        "provider-error", "provider-unavailable", "no answer"
    )  # fmt: skip
    assert (headers["esb_api"], headers["esb_via"]) == ("VERIFY_NIN", "gateway")
    ring = KeyRing()
    ring.add("ega-gw", BUS.public_key())
    attributes = [headers[f"ce_{n}"] for n in ("id", "source", "type", "time")]
    verify_event(ring, headers["ce_sigkeyid"], headers["ce_signature"], *attributes, b"")


def _settings(**values: Any) -> Any:
    from connectors.settings import ProviderSettings
    from deploy.worker import DEMO_BUS_KEY, DEMO_GATEWAY_ENV

    return ProviderSettings(
        **{
            "delivery_key_file": DEMO_BUS_KEY,
            "signing_key_file": DEMO_GATEWAY_ENV["GOVESB_SIGNING_KEY_FILE"],
            "signing_key_id": DEMO_GATEWAY_ENV["GOVESB_SIGNING_KEY_ID"],
            "allow_demo_keys": True,
            **values,
        }
    )


def test_the_connector_starts_only_for_a_provider_of_http_services_with_its_secrets() -> None:
    import pytest

    from connectors.provider.runner import ProviderError, check
    from tests.unit.pipeline_fixtures import registry_view

    view = registry_view()
    check(_settings(institution="nida", secrets={"NIDA_API_TOKEN": "t0ken"}), view)
    with pytest.raises(ProviderError, match="GOVESB_SECRETS__NIDA_API_TOKEN"):
        check(_settings(institution="nida"), view)
    with pytest.raises(ProviderError, match="tra serves no API over http"):
        check(_settings(institution="tra"), view)  # TIN_STATUS is served over Kafka
    with pytest.raises(ProviderError, match="not an institution"):
        check(_settings(institution="nobody"), view)
    with pytest.raises(ProviderError, match="published demo key"):
        check(_settings(institution="nida", allow_demo_keys=False), view)
