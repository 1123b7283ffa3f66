"""The HTTP sink with real processes: worker + sink on the real bus, a real aiohttp endpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from typer.testing import CliRunner

from connectors.cli import app
from connectors.http_sink.delivery import basic_auth
from deploy.kafka.launcher import die_with_parent, free_port
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID
from streams.client.publisher import Publisher
from streams.contract.signing import KeyRing, load_private_key, verify_event
from streams.settings import REPO_ROOT, KafkaSettings, SchemaRegistrySettings
from tests.integration.test_pipeline import _collect
from tests.unit.pipeline_fixtures import CATALOG, KEY_IDS, sample

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
DEATH = "tz.go.rita.DeathRegistered"
# This run's deaths come from a system of its own: the delivery topic is shared with other
# tests (and earlier runs on a reused bus), whose deliveries the endpoint sets aside.
SYSTEM = f"crvs-{uuid.uuid4().hex[:8]}"
SOURCE = f"/institutions/rita/systems/{SYSTEM}"
TOKEN = "test-token-7f3a"  # noqa: S105 - the test endpoint's bearer token


class LegacyEndpoint:
    """A legacy system's HTTP endpoint; its behaviour is switched by the test."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.mode = "ok"  # ok | flaky | down | reject
        self.calls = 0
        self.attempts: Counter[str] = Counter()  # requests per event id
        self.oauth_tokens: dict[str, float] = {}  # token -> expiry
        self.tokens_issued = 0
        self.unauthorized = 0
        self.others = 0

    async def token(self, request: web.Request) -> web.Response:
        """OAuth2 client credentials; tokens live 2 s."""
        form = await request.post()
        if request.headers.get("Authorization") != basic_auth("utumishi-sink", TOKEN) or (
            form.get("grant_type") != "client_credentials"
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        self.tokens_issued += 1
        token = f"t{self.tokens_issued}-{time.monotonic()}"
        self.oauth_tokens[token] = time.monotonic() + 2
        return web.json_response({"access_token": token, "token_type": "bearer", "expires_in": 2})

    def authorized(self, header: str) -> bool:
        if header == f"Bearer {TOKEN}" or hasattr(self, "certificates"):  # mTLS: the TLS layer
            return True
        expiry = self.oauth_tokens.get(header.removeprefix("Bearer "))
        return expiry is not None and time.monotonic() < expiry

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if not self.authorized(request.headers.get("Authorization", "")):
            self.unauthorized += 1
            return web.Response(status=401, text="no or wrong token")
        body = await request.read()
        if self.mode == "down":
            return web.Response(status=503, text="maintenance", headers={"Retry-After": "1"})
        self.attempts[request.headers.get("ce-id", "")] += 1
        # Flaky per event: every other request of an event fails, its first included. (Not
        # every other request overall: a record's retries could then keep meeting the odd
        # turns, while other records' requests take the even ones.)
        if self.mode == "flaky" and self.attempts[request.headers.get("ce-id", "")] % 2:
            return web.Response(status=500, text="internal error")
        if self.mode == "reject":
            return web.Response(status=422, text='{"error": "unknown deceased"}')
        if request.headers.get("ce-source") == SOURCE:
            self.received.append((dict(request.headers), body))
        else:  # left on the shared topics by other test modules' publishers: not this test's
            self.others += 1
        return web.json_response({"ok": True})


def _certificates(directory: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("GovESB test CA")).issuer_name(name("GovESB test CA"))
        .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    files = {"ca": directory / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(f"test {role}")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )  # fmt: skip
        if role == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        files[role] = directory / f"{role}.pem"
        files[f"{role}_key"] = directory / f"{role}.key"
        files[role].write_bytes(
            builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        pkcs8 = serialization.PrivateFormat.PKCS8
        files[f"{role}_key"].write_bytes(
            key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
        )
    return files


@pytest.fixture
async def endpoint(sink_auth: str, tmp_path: Path) -> Any:
    legacy = LegacyEndpoint()
    application = web.Application()
    application.router.add_post("/esb/deaths", legacy.handle)
    application.router.add_post("/oauth/token", legacy.token)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    server_tls = None
    scheme = "http"
    if sink_auth == "mtls":
        legacy.certificates = _certificates(tmp_path)  # type: ignore[attr-defined]
        server_tls = ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH,
            cafile=str(legacy.certificates["ca"]),  # type: ignore[attr-defined]
        )
        server_tls.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no connection
        server_tls.load_cert_chain(legacy.certificates["server"], legacy.certificates["server_key"])  # type: ignore[attr-defined]
        scheme = "https"
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_tls).start()
    legacy.url = f"{scheme}://127.0.0.1:{port}/esb/deaths"  # type: ignore[attr-defined]
    yield legacy
    await runner.cleanup()


@pytest.fixture
def sink_auth() -> str:
    """How the sink authenticates to the endpoint (tests parametrize it)."""
    return "bearer"


@pytest.fixture
async def sink(
    kafka: str,
    registry: str,
    cli_options: list[str],
    endpoint,
    start_worker,
    tmp_path: Path,
    sink_auth: str,
) -> Any:
    """The example registry with utumishi's endpoint pointed at the test endpoint, a worker,
    and ``govesb connect http-sink --subscriber utumishi``; the registry is restored after."""
    document = yaml.safe_load((REPO_ROOT / "deploy/registry.example.yaml").read_text())
    document["catalog"] = str(REPO_ROOT / "schemas/catalog.yaml")
    utumishi = next(i for i in document["institutions"] if i["id"] == "utumishi")
    auth: dict[str, Any] = {"type": sink_auth, "secret_ref": "utumishi_sink_token"}
    if sink_auth == "oauth2":
        auth |= {"token_url": endpoint.url.replace("/esb/deaths", "/oauth/token"),
                 "username": "utumishi-sink"}  # fmt: skip
    utumishi["endpoint"] = {
        "url": endpoint.url,
        "format": "cloudevents",
        "timeout_s": 5,
        "auth": auth,
    }
    edited = tmp_path / "registry.yaml"
    edited.write_text(yaml.safe_dump(document))
    runner = CliRunner()
    applied = await asyncio.to_thread(
        runner.invoke, app, [*cli_options, "registry", "apply", str(edited)]
    )
    assert applied.exit_code == 0, applied.output
    start_worker()
    env = {
        **os.environ,
        "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
        "GOVESB_SCHEMA_REGISTRY__URL": registry,
        "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
        "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID,
        "GOVESB_SECRETS__UTUMISHI_SINK_TOKEN": TOKEN,
        "GOVESB_MAX_ATTEMPTS": "4",
        "GOVESB_BACKOFF_INITIAL_S": "0.05",
        "GOVESB_BACKOFF_MAX_S": "0.5",
        "GOVESB_BREAKER_COOLDOWN_S": "1",
    }
    if sink_auth == "mtls":
        certificates = endpoint.certificates
        env |= {
            "GOVESB_CA_FILE": str(certificates["ca"]),
            "GOVESB_CLIENT_CERT_FILE": str(certificates["client"]),
            "GOVESB_CLIENT_KEY_FILE": str(certificates["client_key"]),
        }
    log_path = tmp_path / "sink.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("govesb")), "connect", "http-sink",
            "--subscriber", "utumishi", "--web-port", str(free_port()),
            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )  # fmt: skip
    yield process
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
    assert TOKEN not in log_path.read_text(), "the endpoint secret leaked into the sink's log"
    restored = await asyncio.to_thread(
        runner.invoke,
        app,
        [*cli_options, "registry", "apply", str(REPO_ROOT / "deploy/registry.example.yaml")],
    )
    assert restored.exit_code == 0, restored.output


async def _publish_deaths(
    kafka: str, registry: str, n: int, keys: int, system: str = SYSTEM
) -> list[tuple[str, str]]:
    """Publish ``n`` deaths over ``keys`` entry numbers from rita's ``system``; return (event
    id, key) in order."""
    key = load_private_key((REPO_ROOT / "deploy/demo-keys/rita.key.pem").read_text())
    published = []
    async with Publisher.connect(
        institution="rita", system=system, key_id=KEY_IDS["rita"], key=key,
        kafka=KafkaSettings(bootstrap_servers=kafka),
        schema_registry=SchemaRegistrySettings(url=registry), catalog=CATALOG,
    ) as publisher:  # fmt: skip
        for index in range(n):
            entry = f"7004{index % keys:06d}"
            death = sample(DEATH, entryNumber=entry, firstName=f"Seq{index}")
            published.append((await publisher.publish(DEATH, death), entry))
    return published


async def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


def _bus_keyring() -> KeyRing:
    ring = KeyRing()
    ring.add(DEMO_BUS_KEY_ID, load_private_key(DEMO_BUS_KEY.read_text()).public_key())
    return ring


async def test_deliveries_arrive_signed_and_survive_a_flaky_then_down_endpoint_in_order(
    kafka: str, registry: str, endpoint, sink
) -> None:
    first = await _publish_deaths(kafka, registry, 6, keys=3)
    await _wait_for(lambda: len(endpoint.received) >= 6, 60)

    ring = _bus_keyring()
    for headers, body in endpoint.received:
        assert headers["Content-Type"] == "application/json"
        assert headers["Idempotency-Key"] == headers["ce-id"]
        assert headers["ce-type"] == DEATH
        assert headers["ce-source"] == SOURCE
        attributes = [headers[f"ce-{name}"] for name in ("id", "source", "type", "time")]
        verify_event(ring, headers["ce-sigkeyid"], headers["ce-signature"], *attributes, body)
        assert set(json.loads(body)) == {
            "entryNumber",
            "deceasedNin",
            "firstName",
            "lastName",
            "dateOfDeath",
        }
    assert {h["ce-id"] for h, _ in endpoint.received} == {event_id for event_id, _ in first}

    endpoint.mode = "flaky"
    second = await _publish_deaths(kafka, registry, 10, keys=3)
    await asyncio.sleep(2)
    endpoint.mode = "down"
    await asyncio.sleep(20)
    endpoint.mode = "ok"
    everything = first + second
    await _wait_for(
        lambda: {h["ce-id"] for h, _ in endpoint.received} >= {e for e, _ in everything}, 90
    )

    from streams.audit.chain import verify
    from streams.audit.verify import read_audit

    audit = await read_audit(KafkaSettings(bootstrap_servers=kafka), "esb.audit")
    receipts = {
        body["event_id"]: body
        for body in (json.loads(v) for _, _, v in audit if v)
        if body["chain"].startswith("sink-utumishi/") and body["outcome"] == "delivered"
    }
    assert {e for e, _ in first} <= set(receipts)
    assert receipts[first[0][0]]["reason"].startswith("status=200 attempts=1")
    assert all(report.intact for report in verify(audit).values())

    by_key: dict[str, list[str]] = defaultdict(list)
    for headers, body in endpoint.received:  # first arrival of each event, in arrival order
        if headers["ce-id"] not in by_key[json.loads(body)["entryNumber"]]:
            by_key[json.loads(body)["entryNumber"]].append(headers["ce-id"])
    for key in {k for _, k in everything}:
        assert by_key[key] == [e for e, k in everything if k == key]


async def test_a_permanent_4xx_goes_to_the_dlq_with_status_and_body(
    kafka: str, registry: str, endpoint, sink
) -> None:
    endpoint.mode = "reject"
    [(event_id, _)] = await _publish_deaths(kafka, registry, 1, keys=1)
    [dead] = await _collect(kafka, ["esb.dlq.utumishi"], {event_id}, wait_s=60)
    headers = dict(dead.headers)
    assert headers["esb_status"] == b"422"
    assert b"unknown deceased" in headers["esb_error"]
    assert headers["esb_attempts"] == b"1"
    endpoint.mode = "ok"
    [(later, _)] = await _publish_deaths(kafka, registry, 1, keys=1)
    await _wait_for(lambda: later in {h["ce-id"] for h, _ in endpoint.received}, 60)
    assert event_id not in {h["ce-id"] for h, _ in endpoint.received}

    runner = CliRunner()
    options = ["--bootstrap", kafka, "dlq"]
    listed = await asyncio.to_thread(
        runner.invoke, app, [*options, "list", "--subscriber", "utumishi", "--ids", event_id]
    )
    assert listed.exit_code == 0, listed.output
    assert "422" in listed.output
    assert "1 dead letter(s) for utumishi" in listed.output
    replayed = await asyncio.to_thread(
        runner.invoke, app, [*options, "replay", "--subscriber", "utumishi", "--ids", event_id]
    )
    assert "replayed 1 dead letter(s)" in replayed.output, replayed.output
    await _wait_for(lambda: event_id in {h["ce-id"] for h, _ in endpoint.received}, 60)


@pytest.mark.parametrize("sink_auth", ["oauth2"])
async def test_oauth2_tokens_are_fetched_cached_and_renewed_when_refused(
    kafka: str, registry: str, endpoint, sink
) -> None:
    first = await _publish_deaths(kafka, registry, 3, keys=3)
    await _wait_for(lambda: len(endpoint.received) >= 3, 60)
    endpoint.oauth_tokens.clear()  # the endpoint forgets every token it issued
    second = await _publish_deaths(kafka, registry, 3, keys=3)
    wanted = {e for e, _ in first + second}
    await _wait_for(lambda: {h["ce-id"] for h, _ in endpoint.received} >= wanted, 60)
    assert endpoint.unauthorized >= 1  # the revoked token was refused once ...
    assert endpoint.tokens_issued >= 2  # ... and the sink got a new one
    assert all(h["Authorization"].startswith("Bearer t") for h, _ in endpoint.received)


@pytest.mark.parametrize("sink_auth", ["mtls"])
async def test_mtls_deliveries_present_the_client_certificate(
    kafka: str, registry: str, endpoint, sink
) -> None:
    published = await _publish_deaths(kafka, registry, 3, keys=2)
    wanted = {event_id for event_id, _ in published}
    await _wait_for(lambda: {h["ce-id"] for h, _ in endpoint.received} >= wanted, 60)
    assert endpoint.url.startswith("https://")
