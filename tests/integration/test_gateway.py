"""The HTTP gateway over real HTTP, producing to the real broker with the real registry."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import aiohttp
import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink.delivery import basic_auth
from deploy.worker import DEMO_GATEWAY_KEY_ID
from streams.contract.envelope import Envelope
from streams.contract.jsonavro import to_json
from streams.contract.signing import load_private_key
from streams.registry.view import RegistryView
from streams.settings import REPO_ROOT, KafkaSettings
from tests.integration.gateways import served_gateway
from tests.integration.test_pipeline import _collect
from tests.unit.pipeline_fixtures import CATALOG, SAMPLES

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http]
SECRET = "nida-client-secret-9c1e"  # noqa: S105 - a test client's secret
CITIZEN = "tz.go.nida.CitizenRegistered"


def _structured(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents+json"}


@pytest.fixture
async def gateway(kafka: str, registry: str, applied_registry) -> Any:
    view = RegistryView(KafkaSettings(bootstrap_servers=kafka))
    await view.start()
    limits = {"max_body_bytes": 20_000, "rate_per_s": 5, "burst": 40}
    async with (
        served_gateway(view, kafka, registry, {"nida": SECRET}, **limits) as (port, state),
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        yield http, state
    await view.stop()


GRANT = {"grant_type": "client_credentials"}


async def _token(http: aiohttp.ClientSession, secret: str = SECRET) -> str:
    auth = {"Authorization": basic_auth("nida", secret)}
    async with http.post("/oauth/token", data=GRANT, headers=auth) as r:
        body = await r.json()
        assert r.status == 200, body
        assert body["token_type"] == "bearer"  # noqa: S105 - the OAuth2 token type
        return str(body["access_token"])


async def test_token_then_a_structured_cloudevent_is_on_the_bus_after_202(
    kafka: str, gateway
) -> None:
    http, _ = gateway
    wrong = {"Authorization": basic_auth("nida", "wrong")}
    async with http.post("/oauth/token", data=GRANT, headers=wrong) as refused:
        assert refused.status == 401
    token = await _token(http)
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/institutions/nida/systems/nid-portal",
        "type": CITIZEN,
        "data": SAMPLES[CITIZEN],
    }
    async with http.post(
        "/v1/events", data=json.dumps(event), headers=_structured(token)
    ) as response:
        body = await response.json()
        assert response.status == 202, body
    assert body == {"id": event["id"], "status": "accepted"}
    [record] = await _collect(kafka, ["esb.ingress.nida"], {event["id"]}, wait_s=10)
    envelope = Envelope.from_headers(record.headers)
    assert envelope.source == "/institutions/nida/systems/nid-portal"
    assert envelope.sig_key_id == DEMO_GATEWAY_KEY_ID  # the gateway signs with its own key
    assert record.key == SAMPLES[CITIZEN]["nin"].encode()


@pytest.mark.parametrize(
    ("change", "status", "error", "field"),
    [
        ({"data": {**SAMPLES[CITIZEN], "dateOfBirth": "14/01/1990"}}, 400, "invalid_data",
         "CitizenRegistered.dateOfBirth"),
        ({"data": {**SAMPLES[CITIZEN], "sex": "X"}}, 400, "invalid_data",
         "tz.go.nida.CitizenRegistered.sex"),
        ({"type": "tz.go.nida.CitizenMoved"}, 404, "unknown_type", None),
        ({"type": "tz.go.rita.BirthRegistered"}, 403, "not_owner", None),
        ({"source": "/institutions/tra/systems/itax"}, 403, "source_mismatch", "source"),
        ({"specversion": "0.3"}, 400, "invalid_event", "specversion"),
        ({"id": "not-a-uuid"}, 400, "invalid_event", "id"),
    ],
)  # fmt: skip
async def test_bad_events_get_their_status_and_the_failing_field(
    gateway, change: dict, status: int, error: str, field: str | None
) -> None:
    http, _ = gateway
    token = await _token(http)
    event = {"specversion": "1.0", "source": "/institutions/nida/systems/crvs", "type": CITIZEN,
             "data": SAMPLES[CITIZEN], **change}  # fmt: skip
    async with http.post(
        "/v1/events", data=json.dumps(event), headers=_structured(token)
    ) as response:
        body = await response.json()
    assert (response.status, body["error"]) == (status, error), body
    assert body.get("field") == field
    assert "Traceback" not in json.dumps(body)


async def test_binary_mode_media_types_auth_size_and_rate_limits(gateway) -> None:
    http, _ = gateway
    token = await _token(http)
    headers = {
        "Authorization": f"Bearer {token}",
        "ce-specversion": "1.0",
        "ce-type": CITIZEN,
        "ce-source": "/institutions/nida/systems/crvs",
        "Content-Type": "application/json",
    }
    async with http.post("/v1/events", data=json.dumps(SAMPLES[CITIZEN]), headers=headers) as r:
        assert r.status == 202, await r.text()
    async with http.post(
        "/v1/events", data="hello", headers={**headers, "Content-Type": "text/plain"}
    ) as r:
        assert r.status == 415
    async with http.post(
        "/v1/events", data="{}", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 401
    async with http.post(
        "/v1/events", data="{}", headers={**headers, "Authorization": "Bearer nope"}
    ) as r:
        assert r.status == 401
    async with http.post("/v1/events", data="x" * 30_000, headers=headers) as r:
        assert r.status == 413
    statuses = []
    for _ in range(60):
        async with http.post(
            "/v1/events", data="{}", headers={**headers, "ce-type": "tz.go.x.Y"}
        ) as r:
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
    assert 429 in statuses
    async with http.get("/openapi.json") as r:
        spec = await r.json()
    assert set(spec["paths"]) >= {"/oauth/token", "/v1/events", "/engine/esb/push-request"}


def _govesb_push(push_code: str, body: dict) -> tuple[str, str]:
    """A push as existing GovESB client libraries build it: compact JSON for data, then
    SHA256withECDSA over those exact UTF-8 bytes, base64 DER."""
    data = json.dumps({"pushCode": push_code, "esbBody": body}, separators=(",", ":"))
    key = load_private_key((REPO_ROOT / "deploy/demo-keys/nida.key.pem").read_text())
    return data, key.sign(data.encode())


async def test_a_govesb_push_signed_with_secp256k1_is_accepted_and_one_altered_byte_is_not(
    kafka: str, gateway
) -> None:
    http, state = gateway
    token = await _token(http)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    # A name of this run's own: signatures are deterministic (RFC 6979), so the same push
    # on a reused bus would carry an event id an earlier run already put on the topic.
    unique = {"nin": "19900114141010007777", "firstName": f"Neema-{uuid.uuid4().hex[:8]}"}
    citizen = to_json({**SAMPLES[CITIZEN], **unique})
    data, signature = _govesb_push(CITIZEN, citizen)
    body = f'{{"data":{data},"signature":"{signature}"}}'
    altered = body.replace("19900114141010007777", "19900114141010007778")
    async with http.post("/engine/esb/push-request", data=altered, headers=auth) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "invalid_signature"
    async with http.post("/engine/esb/push-request", data=body, headers=auth) as r:
        text = await r.text()
        assert r.status == 202, text
    ack_data = text[len('{"data":') : text.rindex(',"signature"')]
    ack_signature = json.loads(text)["signature"]
    assert state.bus_key.public_key().verify(ack_data.encode(), ack_signature)
    event_id = json.loads(ack_data)["esbBody"]["eventId"]
    [record] = await _collect(kafka, ["esb.ingress.nida"], {event_id}, wait_s=10)
    assert dict(record.headers)["esb_via"] == b"gateway"
    async with http.post("/engine/esb/push-request", data=body, headers=auth) as r:
        assert r.status == 409  # the same signed request again is a replay
    garbage = base64.b64encode(b"nonsense").decode()
    async with http.post(
        "/engine/esb/push-request", data=f'{{"data":{data},"signature":"{garbage}"}}', headers=auth
    ) as r:
        assert r.status == 401


@pytest.mark.slow
async def test_the_gateway_answers_503_not_500_while_the_broker_is_down(tmp_path) -> None:
    """A broker of this test's own, stopped under a running gateway."""
    from deploy.kafka.launcher import LocalBus
    from streams.registry.governance import register_catalog
    from streams.registry.model import load_registry
    from streams.registry.sync import apply_registry
    from streams.settings import TopicSettings

    bus = await asyncio.to_thread(LocalBus(data_dir=tmp_path, say=lambda _: None).start)
    try:
        kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
        await register_catalog(CATALOG, AsyncSchemaRegistryClient({"url": bus.registry_url}))
        registry, _ = load_registry(REPO_ROOT / "deploy" / "registry.example.yaml")
        await apply_registry(registry, kafka, TopicSettings())
        view = RegistryView(kafka)
        await view.start(follow=False)
        await view.stop()
        clients = {"nida": SECRET}
        async with served_gateway(
            view, bus.bootstrap, bus.registry_url, clients, produce_timeout_s=3
        ) as (port, _):
            headers = {"X-API-Key": SECRET, "Content-Type": "application/cloudevents+json"}
            event = {"specversion": "1.0", "source": "/institutions/nida/systems/crvs",
                     "type": CITIZEN, "data": SAMPLES[CITIZEN]}  # fmt: skip
            url = f"http://127.0.0.1:{port}/v1/events"
            async with aiohttp.ClientSession() as http:
                async with http.post(url, data=json.dumps(event), headers=headers) as r:
                    assert r.status == 202, await r.text()
                await asyncio.to_thread(bus.broker.stop)
                async with http.post(url, data=json.dumps(event), headers=headers) as r:
                    body = await r.json()
                    assert r.status == 503, body
                    assert body["error"] == "broker_unavailable"
                    assert r.headers["Retry-After"] == "5"
                    assert str(uuid.UUID(body["id"])) == body["id"]  # the id to resend with
    finally:
        await asyncio.to_thread(bus.stop)
