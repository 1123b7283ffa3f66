"""Gateway security against a real ``govesb connect gateway`` process.

Tokens: none, unknown, expired (the process runs with a 3-second token lifetime), another
institution's: each refused with its status. Replays: the same signed push again, with its
signature re-encoded (``s`` -> ``n - s``, other base64 padding bits) or twice at once, is
refused with 409. Secrets (client secrets, every issued token, the bus key in any form, the
SASL and schema registry passwords) never appear in the process's log or its ``/metrics``
after every route was driven through success and failure.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from connectors.http_sink.delivery import basic_auth
from deploy.kafka.launcher import free_port
from deploy.worker import DEMO_GATEWAY_ENV, DEMO_GATEWAY_KEY, WorkerProcess, start_govesb
from tests.corpus.govesb_clients import connector_body, connector_data
from tests.corpus.malformed import (
    CITIZEN,
    DEATH,
    citizen_json,
    push_data,
    push_text,
    signed,
    structured,
)
from tests.unit.pipeline_fixtures import SAMPLES

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
TOKEN_TTL_S = 3
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass
class RunningGateway:
    """The gateway process and every secret it was given or handed out."""

    process: WorkerProcess
    secrets: dict[str, str]
    tokens: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.process.web_port}"


@pytest.fixture(scope="module")
def gateway(
    kafka: str, registry: str, applied_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    secrets = {
        "nida": f"nida-secret-{uuid.uuid4().hex}",
        "rita": f"rita-secret-{uuid.uuid4().hex}",
        "sasl": f"sasl-password-{uuid.uuid4().hex}",
        "registry": f"registry-password-{uuid.uuid4().hex}",
    }
    port = free_port()
    process = start_govesb(
        ["connect", "gateway", "--web-port", str(port)],
        {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
            # Configured but not sent: the broker has no SASL (sasl_mechanism unset).
            "GOVESB_KAFKA__SASL_USERNAME": "gateway",
            "GOVESB_KAFKA__SASL_PASSWORD": secrets["sasl"],
            "GOVESB_SCHEMA_REGISTRY__URL": registry,
            # Sent as HTTP Basic on every registry call (the test registry ignores it).
            "GOVESB_SCHEMA_REGISTRY__USERNAME": "gateway",
            "GOVESB_SCHEMA_REGISTRY__PASSWORD": secrets["registry"],
            **DEMO_GATEWAY_ENV,
            "GOVESB_CLIENTS__NIDA": secrets["nida"],
            "GOVESB_CLIENTS__RITA": secrets["rita"],
            "GOVESB_TOKEN_TTL_S": str(TOKEN_TTL_S),
            "GOVESB_MAX_BODY_BYTES": "20000",
            "GOVESB_RATE_PER_S": "1000",
            "GOVESB_BURST": "1000",
        },
        tmp_path_factory.mktemp("gateway-security") / "gateway.log",
        port,
        lambda body: body["status"] == "ok",
    )
    yield RunningGateway(process, secrets)
    process.stop()


async def _token(http: aiohttp.ClientSession, gw: RunningGateway, institution: str) -> str:
    async with http.post(
        f"{gw.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_auth(institution, gw.secrets[institution])},
    ) as response:
        body = await response.json()
        assert response.status == 200, body
    gw.tokens.append(body["access_token"])
    return str(body["access_token"])


async def _post(
    http: aiohttp.ClientSession, url: str, body: str | bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, json.loads(await response.read())


def _event_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents+json"}


def _push_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def _signed_push(institution: str = "nida", push_code: str = CITIZEN) -> tuple[str, str]:
    """(data text, signature) of a new push signed by ``institution``."""
    body = SAMPLES[DEATH] if push_code == DEATH else None
    data = push_data(push_code, **({"esbBody": body} if body else {}))
    text = json.dumps(data, separators=(",", ":"))
    return text, signed(text, institution)


async def test_no_token_an_unknown_one_and_an_expired_one_are_refused_with_401(
    gateway: RunningGateway,
) -> None:
    event = json.dumps(structured())
    text, signature = _signed_push()
    async with aiohttp.ClientSession() as http:
        for path, body in (("/v1/events", event), ("/engine/esb/push-request",
                                                   push_text(text, signature))):  # fmt: skip
            url = f"{gateway.url}{path}"
            status, refused = await _post(http, url, body, {"Content-Type": "application/json"})
            assert (status, refused["error"]) == (401, "unauthenticated")
            status, refused = await _post(http, url, body, _push_headers("not-a-token"))
            assert (status, refused["error"]) == (401, "invalid_token")
            status, refused = await _post(http, url, body, {"X-API-Key": "not-a-secret"})
            assert (status, refused["error"]) == (401, "invalid_api_key")

        token = await _token(http, gateway, "nida")
        status, accepted = await _post(
            http, f"{gateway.url}/v1/events", event, _event_headers(token)
        )
        assert status == 202, accepted
        await asyncio.sleep(TOKEN_TTL_S + 0.5)
        status, refused = await _post(
            http, f"{gateway.url}/v1/events", json.dumps(structured()), _event_headers(token)
        )
        assert (status, refused["error"]) == (401, "invalid_token")
        assert "expired" in refused["message"]
        status, refused = await _post(
            http, f"{gateway.url}/engine/esb/push-request", push_text(text, signature),
            _push_headers(token),
        )  # fmt: skip
        assert (status, refused["error"]) == (401, "invalid_token")


async def test_another_institutions_token_cannot_publish_as_it(gateway: RunningGateway) -> None:
    events = f"{gateway.url}/v1/events"
    pushes = f"{gateway.url}/engine/esb/push-request"
    rita_event = structured(type=DEATH, source="/institutions/rita/systems/crvs",
                            data=SAMPLES[DEATH])  # fmt: skip
    async with aiohttp.ClientSession() as http:
        nida = await _token(http, gateway, "nida")
        # rita's event type with nida's token: not nida's to publish.
        status, refused = await _post(
            http, events, json.dumps({**rita_event, "source": None}), _event_headers(nida)
        )
        assert (status, refused["error"]) == (403, "not_owner")
        # ... and claiming rita's source is refused before that.
        status, refused = await _post(http, events, json.dumps(rita_event), _event_headers(nida))
        assert (status, refused["error"], refused["field"]) == (403, "source_mismatch", "source")
        # nida's client secret as an API key is nida too.
        status, refused = await _post(
            http, events, json.dumps({**rita_event, "source": None}),
            {"X-API-Key": gateway.secrets["nida"], "Content-Type": "application/cloudevents+json"},
        )  # fmt: skip
        assert (status, refused["error"]) == (403, "not_owner")
        # A push rita signed, sent with nida's token: no key of nida's verifies it.
        text, signature = _signed_push("rita", DEATH)
        status, refused = await _post(http, pushes, push_text(text, signature), _push_headers(nida))
        assert (status, refused["error"]) == (401, "invalid_signature")
        # A push nida signed of rita's type, with nida's token.
        text, signature = _signed_push("nida", DEATH)
        status, refused = await _post(http, pushes, push_text(text, signature), _push_headers(nida))
        assert (status, refused["error"]) == (403, "not_owner")
        # With rita's own token, rita's push and event go through.
        rita = await _token(http, gateway, "rita")
        text, signature = _signed_push("rita", DEATH)
        status, accepted = await _post(
            http, pushes, push_text(text, signature), _push_headers(rita)
        )
        assert status == 202, accepted
        status, accepted = await _post(http, events, json.dumps(rita_event), _event_headers(rita))
        assert status == 202, accepted


def _malleated(signature: str) -> str:
    """The same ECDSA signature as (r, n - s): verifies just as well."""
    r, s = decode_dss_signature(base64.b64decode(signature))
    return base64.b64encode(encode_dss_signature(r, SECP256K1_ORDER - s)).decode()


def _repadded(signature: str) -> str | None:
    """Another base64 text of the same bytes (a padding bit set), if the length allows one."""
    stripped = signature.rstrip("=")
    if len(stripped) == len(signature):
        return None
    last = B64[B64.index(stripped[-1]) ^ 1]  # the lowest bit of the last digit is padding
    return stripped[:-1] + last + signature[len(stripped) :]


async def test_a_replayed_push_is_refused_however_its_signature_is_encoded(
    gateway: RunningGateway,
) -> None:
    url = f"{gateway.url}/engine/esb/push-request"
    async with aiohttp.ClientSession() as http:
        token = await _token(http, gateway, "nida")
        text, signature = _signed_push()
        status, accepted = await _post(http, url, push_text(text, signature), _push_headers(token))
        assert status == 202, accepted
        replays = {"the same body": (text, signature), "s -> n - s": (text, _malleated(signature))}
        # Whether base64 has padding bits to vary depends on the signature's length.
        while _repadded(signature) is None:
            text, signature = _signed_push()
            status, accepted = await _post(
                http, url, push_text(text, signature), _push_headers(token)
            )
            assert status == 202, accepted
        replays["other padding bits"] = (text, str(_repadded(signature)))
        for name, (data_text, variant) in replays.items():
            status, refused = await _post(
                http, url, push_text(data_text, variant), _push_headers(token)
            )
            assert (name, status, refused.get("error")) == (name, 409, "replayed"), refused

        # Twice at once: one is accepted, the other is a replay.
        text, signature = _signed_push()
        body = push_text(text, signature)
        results = await asyncio.gather(
            *(_post(http, url, body, _push_headers(token)) for _ in range(2))
        )
        assert sorted(status for status, _ in results) == [202, 409], results


def _bus_key_forms() -> dict[str, str]:
    """Every text of the gateway's private key that could leak: the PEM, its lines, base64
    DER, the private scalar in hex and decimal."""
    pem = DEMO_GATEWAY_KEY.read_text()
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, EllipticCurvePrivateKey)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    scalar = key.private_numbers().private_value
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    forms = {
        "bus key PEM": pem.strip(),
        "bus key base64 DER": base64.b64encode(der).decode(),
        "bus key PEM body": "".join(lines),
        "bus key scalar (hex)": f"{scalar:064x}",
        "bus key scalar (decimal)": str(scalar),
    }
    forms.update({f"bus key PEM line {n}": line for n, line in enumerate(lines)})
    return forms


async def test_no_secret_appears_in_the_log_or_the_metrics(gateway: RunningGateway) -> None:
    events, pushes = f"{gateway.url}/v1/events", f"{gateway.url}/engine/esb/push-request"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession() as http:
        # Every route, through success and failure.
        for path in ("/health", "/metrics", "/openapi.json", "/nowhere"):
            async with http.get(f"{gateway.url}{path}") as response:
                assert response.status in (200, 404)
        for auth in (
            basic_auth("nida", "wrong"),
            basic_auth("nida", gateway.secrets["rita"]),
            "Basic " + gateway.secrets["nida"],
            "Bearer " + gateway.secrets["nida"],
        ):
            status, _ = await _post(
                http,
                f"{gateway.url}/oauth/token",
                "grant_type=client_credentials",
                {**form, "Authorization": auth},
            )
            assert status == 401
        nida = await _token(http, gateway, "nida")
        rita = await _token(http, gateway, "rita")
        status, _ = await _post(http, events, json.dumps(structured()), _event_headers(nida))
        assert status == 202
        status, _ = await _post(
            http,
            events,
            json.dumps(structured()),
            {"X-API-Key": gateway.secrets["nida"], "Content-Type": "application/cloudevents+json"},
        )
        assert status == 202
        for body, headers, expected in [
            ("{", _event_headers(nida), 400),
            (json.dumps(structured(type=DEATH)), _event_headers(nida), 403),
            (json.dumps(structured()), _event_headers(rita), 403),
            (json.dumps(structured(type="tz.go.x.Y")), _event_headers(nida), 404),
            ("x" * 30_000, _event_headers(nida), 413),
            ("{}", {**_event_headers(nida), "Content-Type": "text/plain"}, 415),
            ("{}", {"X-API-Key": gateway.secrets["rita"] + "x"}, 401),
        ]:
            status, refused = await _post(http, events, body, headers)
            assert status == expected, refused
        text, signature = _signed_push()
        for body, expected in [
            (push_text(text, signature), 202),
            (push_text(text, signature), 409),
            (push_text(text, signed(text, "rita")), 401),
            ("[]", 400),
        ]:
            status, refused = await _post(http, pushes, body, _push_headers(nida))
            assert status == expected, refused
        # Connector 0.1.5: the raw token as Authorization and inside the signed data.
        raw = {"Authorization": nida, "Content-Type": "application/json"}
        for inside, expected in [(nida, 202), (rita, 401), (gateway.secrets["nida"], 401)]:
            text = connector_data(pushCode=CITIZEN, authorization=inside, esbBody=citizen_json())
            status, refused = await _post(http, pushes, connector_body(text, signed(text)), raw)
            assert status == expected, refused
        async with http.get(f"{gateway.url}/metrics") as response:
            metrics = await response.text()
    await asyncio.sleep(0.5)  # let the process flush its log
    log = gateway.process.log_path.read_text()
    assert "POST /oauth/token 401" in log  # the access log is on: there is something to search
    assert "POST /v1/events 202" in log
    secrets = {
        **{f"client secret of {k}": v for k, v in gateway.secrets.items() if k in ("nida", "rita")},
        "SASL password": gateway.secrets["sasl"],
        "schema registry password": gateway.secrets["registry"],
        **{f"issued token {n}": token for n, token in enumerate(gateway.tokens)},
        **_bus_key_forms(),
    }
    assert len(gateway.tokens) >= 2
    leaked = [name for name, value in secrets.items() if value in log or value in metrics]
    assert leaked == [], f"secrets in the gateway's log or /metrics: {leaked}"
