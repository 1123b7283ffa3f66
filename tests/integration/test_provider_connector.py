"""The provider connector with real processes: ``govesb connect provider --institution nida``
between the real bus and a real legacy HTTP provider (an aiohttp server in the test).

The test plays the pipeline's part on the request side: it puts requests routed to nida on
``esb.request.nida`` (re-signed by the bus's delivery key, with a reply ticket), and reads the
connector's answers on ``esb.ingress.nida``, where the pipeline would check them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from typer.testing import CliRunner

from connectors.cli import app
from connectors.gateway.govesb import exact_data
from deploy.kafka.launcher import free_port
from deploy.worker import (
    DEMO_BUS_KEY,
    DEMO_BUS_KEY_ID,
    DEMO_GATEWAY_ENV,
    DEMO_GATEWAY_KEY_ID,
    WorkerProcess,
    start_govesb,
)
from streams.client.consuming import assign_topics
from streams.contract import requests, topics
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore, encode
from streams.contract.envelope import format_time, new_envelope
from streams.contract.jsonavro import to_json
from streams.contract.signing import KeyRing, load_private_key, sign_event, verify_event
from streams.settings import REPO_ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
CATALOG = Catalog.load(REPO_ROOT / "schemas" / "catalog.yaml")
VERIFY_NIN = CATALOG.services["VERIFY_NIN"]
SAMPLES = yaml.safe_load((REPO_ROOT / "schemas/samples.yaml").read_text())
CITIZEN = SAMPLES["VERIFY_NIN.response"]
KNOWN_NIN = SAMPLES["tz.go.nida.CitizenRegistered"]["nin"]
TOKEN = "nida-test-token-4b1e"  # noqa: S105 - the test provider's bearer token
BUS_KEY = load_private_key(DEMO_BUS_KEY.read_text())
NIDA_KEY = load_private_key((REPO_ROOT / "deploy/demo-keys/nida.key.pem").read_text())
OTHER_KEY = load_private_key((REPO_ROOT / "deploy/demo-keys/rita.key.pem").read_text())
GATEWAY_KEY = load_private_key(Path(DEMO_GATEWAY_ENV["GOVESB_SIGNING_KEY_FILE"]).read_text())


def signed(data: dict[str, Any], key: Any) -> bytes:
    """A provider's answer as GovESB helpers write it: compact data, signed over its text."""
    text = json.dumps(data, separators=(",", ":"))
    return f'{{"data":{text},"signature":"{key.sign(text.encode())}"}}'.encode()


class LegacyNida:
    """NIDA's legacy VERIFY_NIN API; each NIN asked about picks a behaviour.

    ``fail-<n>`` NINs get 503 for their first ``n`` calls; ``hold`` waits for ``released``.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # per requestId
        self.called = asyncio.Event()
        self.bodies: dict[str, dict[str, Any]] = {}
        self.unsigned_requests = 0
        self.released = asyncio.Event()
        self.behaviour: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401, text="no or wrong token")
        raw = await request.read()
        text = raw.decode()
        data = json.loads(exact_data(text))
        signature = json.loads(text)["signature"]
        if not BUS_KEY.public_key().verify(exact_data(text).encode(), signature):
            self.unsigned_requests += 1
            return web.Response(status=401, text="the bus's signature does not verify")
        request_id = data["requestId"]
        self.calls[request_id] += 1
        self.called.set()
        self.bodies[request_id] = data
        nin = data["esbBody"]["nin"]
        how = self.behaviour.get(nin, "ok")
        if how.startswith("fail-") and self.calls[request_id] <= int(how[5:]):
            return web.Response(status=503, text="maintenance")
        if how == "hold":
            await self.released.wait()
        if how == "refuse":
            answer = {"esbBody": {}, "success": False, "message": "NIN database offline"}
            return web.Response(body=signed(answer, NIDA_KEY), content_type="application/json")
        if how == "unsigned":
            body = json.dumps({"data": {"success": True, "esbBody": {"nin": nin}}})
            return web.Response(text=body, content_type="application/json")
        if how == "huge":  # over the connector's GOVESB_MAX_ANSWER_BYTES (20,000)
            answer = {"success": True, "esbBody": {"nin": nin, "valid": True,
                                                   "firstName": "N" * 30_000}}  # fmt: skip
            return web.Response(body=signed(answer, NIDA_KEY), content_type="application/json")
        if how == "invalid":
            answer = {"success": True, "esbBody": {"nin": nin, "valid": "yes"}}
            return web.Response(body=signed(answer, NIDA_KEY), content_type="application/json")
        # The citizen of schemas/samples.yaml's VERIFY_NIN.response; others are not valid.
        body = dict(CITIZEN) if nin == KNOWN_NIN else {"nin": nin, "valid": False}
        key = OTHER_KEY if how == "wrong-key" else NIDA_KEY
        answer = {"success": True, "esbBody": body, "message": "OK"}
        return web.Response(body=signed(answer, key), content_type="application/json")


@pytest.fixture
async def nida() -> AsyncIterator[LegacyNida]:
    legacy = LegacyNida()
    application = web.Application()
    application.router.add_post("/api/verify-nin", legacy.handle)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    legacy.url = f"http://127.0.0.1:{port}/api/verify-nin"  # type: ignore[attr-defined]
    yield legacy
    legacy.released.set()
    await runner.cleanup()


@pytest.fixture
async def provider_registry(
    cli_options: list[str], applied_registry: Path, nida: LegacyNida, tmp_path: Path
) -> AsyncIterator[None]:
    """The example registry with VERIFY_NIN served by the test's legacy API; restored after."""
    document = yaml.safe_load(await asyncio.to_thread(applied_registry.read_text))
    document["catalog"] = str(REPO_ROOT / "schemas/catalog.yaml")
    service = next(s for s in document["services"] if s["api_code"] == "VERIFY_NIN")
    service["endpoint"]["url"] = nida.url  # type: ignore[attr-defined]
    service["max_attempts"] = 3
    edited = tmp_path / "registry.yaml"
    edited.write_text(yaml.safe_dump(document))
    runner = CliRunner()
    applied = await asyncio.to_thread(
        runner.invoke, app, [*cli_options, "registry", "apply", str(edited)]
    )
    assert applied.exit_code == 0, applied.output
    yield
    restored = await asyncio.to_thread(
        runner.invoke, app, [*cli_options, "registry", "apply", str(applied_registry)]
    )
    assert restored.exit_code == 0, restored.output


@pytest.fixture
async def start_connector(
    kafka: str, registry: str, provider_registry: None, tmp_path: Path
) -> AsyncIterator[Callable[[], Any]]:
    """Start ``govesb connect provider --institution nida``, ready once it holds partitions."""
    started: list[WorkerProcess] = []

    async def start() -> WorkerProcess:
        port = free_port()
        env = {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
            "GOVESB_SCHEMA_REGISTRY__URL": registry,
            "GOVESB_DELIVERY_KEY_FILE": str(DEMO_BUS_KEY),
            **DEMO_GATEWAY_ENV,
            "GOVESB_SECRETS__NIDA_API_TOKEN": TOKEN,
            "GOVESB_BACKOFF_INITIAL_S": "0.05",
            "GOVESB_BACKOFF_MAX_S": "0.2",
            "GOVESB_SESSION_TIMEOUT_MS": "6000",
            "GOVESB_HEARTBEAT_INTERVAL_MS": "1000",
            "GOVESB_MAX_ANSWER_BYTES": "20000",
        }
        connector = await asyncio.to_thread(
            start_govesb,
            ["connect", "provider", "--institution", "nida", "--web-port", str(port)],
            env,
            tmp_path / f"provider-{len(started)}.log",
            port,
            lambda body: body["checks"]["consumer"]["partitions"] > 0,
        )
        started.append(connector)
        return connector

    yield start
    for connector in started:
        await asyncio.to_thread(connector.stop)
        assert TOKEN not in connector.log_path.read_text(), "the provider's token leaked"


async def route(
    kafka: str,
    registry: str,
    nins: list[str],
    *,
    deadline_s: float = 20.0,
    late_s: float = 3600.0,
) -> list[tuple[str, int, int]]:
    """Put one request per NIN on esb.request.nida as the pipeline routes it (tra asking);
    return (request id, partition, offset) of each."""
    store = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
    schema_id = await store.id_for(VERIFY_NIN.request, register=True)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    routed = []
    try:
        for nin in nins:
            request_id = requests.new_request_id()
            value = encode(schema_id, VERIFY_NIN.request.parsed, {"nin": nin})
            envelope = new_envelope(
                "tra", "itax", VERIFY_NIN.request.name, request_id, event_id=request_id
            )
            signature = sign_event(
                BUS_KEY, envelope.id, envelope.source, envelope.type, envelope.time, value
            )
            now_ms = int(time.time() * 1000)
            deadline_ms = now_ms + int(deadline_s * 1000)
            ticket = requests.Ticket("tra", "nida", "VERIFY_NIN", request_id,
                                     deadline_ms, deadline_ms + int(late_s * 1000))  # fmt: skip
            deadline = format_time(dt.datetime.fromtimestamp(deadline_ms / 1000, dt.UTC))
            headers = [
                *envelope.signed(DEMO_BUS_KEY_ID, signature).to_headers(),
                (requests.API_HEADER, b"VERIFY_NIN"),
                (requests.REQUESTER_HEADER, b"tra"),
                (requests.DEADLINE_HEADER, deadline.encode()),
                *ticket.headers(DEMO_BUS_KEY_ID, BUS_KEY),
            ]
            metadata = await producer.send_and_wait(
                topics.request("nida"), value, key=request_id.encode(), headers=headers
            )
            routed.append((request_id, metadata.partition, metadata.offset))
    finally:
        await producer.stop()
    return routed


async def committed_past(kafka: str, partition: int, offset: int) -> None:
    """Return once the connector's group committed esb.request.nida[partition] past
    ``offset`` (it is done with that request: answered, or deliberately not)."""
    group = topics.provider_group("nida")
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while True:
                committed = await consumer.committed(TopicPartition(topics.request("nida"),
                                                                    partition))  # fmt: skip
                if committed is not None and committed > offset:
                    return
                await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def connector_answers(kafka: str, answer_ids: set[str], wait_s: float) -> list[Any]:
    """The connector's answer events (signed with the gateway key) with one of ``answer_ids``
    on esb.ingress.nida, until each was seen or ``wait_s`` passed.

    Another test's Kafka-native provider on the shared broker may answer whatever reaches
    esb.request.nida, with nida's own key: those answers are not the connector's.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[Any] = []
    try:
        await assign_topics(consumer, [topics.ingress("nida")])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while {dict(r.headers)["ce_id"].decode() for r in found} < answer_ids:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        found.extend(
                            r for r in batch
                            if dict(r.headers).get("ce_id", b"").decode() in answer_ids
                            and dict(r.headers).get("ce_sigkeyid") == DEMO_GATEWAY_KEY_ID.encode()
                        )  # fmt: skip
        return found
    finally:
        await consumer.stop()


async def answers(kafka: str, registry: str, request_ids: list[str]) -> dict[str, Any]:
    """The answers on esb.ingress.nida to ``request_ids``: request id -> (headers, body),
    each checked against the contract (signed by the gateway key, ticket carried)."""
    wanted = {requests.answer_id(r): r for r in request_ids}
    found = await connector_answers(kafka, set(wanted), 60)
    ring = KeyRing()
    ring.add(DEMO_GATEWAY_KEY_ID, GATEWAY_KEY.public_key())
    store = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
    result: dict[str, Any] = {}
    for record in found:
        headers = {k: v.decode() for k, v in record.headers}
        request_id = wanted[headers["ce_id"]]
        assert request_id not in result, f"two answers to {request_id}"
        attributes = [headers[f"ce_{n}"] for n in ("id", "source", "type", "time")]
        verify_event(ring, headers["ce_sigkeyid"], headers["ce_signature"], *attributes,
                     record.value or b"")  # fmt: skip
        assert headers["esb_via"] == "gateway"
        assert headers["ce_correlationid"] == headers["ce_subject"] == request_id
        assert record.key == request_id.encode()
        assert headers["ce_type"] == VERIFY_NIN.response.name
        assert headers["ce_source"] == "/institutions/nida/systems/crvs"
        assert json.loads(headers[requests.TICKET_HEADER])["request_id"] == request_id
        body = to_json((await store.decode(record.value)).record) if record.value else None
        result[request_id] = (headers, body)
    assert set(result) == set(request_ids), "some requests were not answered"
    return result


async def test_answers_failures_and_retries_each_get_one_answer_with_its_reason(
    kafka: str, registry: str, nida: LegacyNida, start_connector
) -> None:
    nida.behaviour = {
        "20000000000000000001": "refuse",
        "20000000000000000002": "fail-9",  # down for longer than the attempts
        "20000000000000000003": "fail-2",  # recovers within the deadline
        "20000000000000000004": "unsigned",
        "20000000000000000005": "wrong-key",
        "20000000000000000006": "invalid",
        "20000000000000000007": "huge",
    }
    connector = await start_connector()
    nins = [KNOWN_NIN, "19000000000000000000", *nida.behaviour]
    routed = await route(kafka, registry, nins)
    got = await answers(kafka, registry, [r for r, _, _ in routed])
    by_nin = dict(zip(nins, (got[r] for r, _, _ in routed), strict=True))

    headers, body = by_nin[KNOWN_NIN]
    assert headers["esb_status"] == "answered"
    assert body["valid"] is True
    assert (body["firstName"], body["phoneNumber"]) == ("Neema", "+255754123456")
    headers, body = by_nin["19000000000000000000"]
    assert (headers["esb_status"], body["valid"], body["firstName"]) == ("answered", False, None)

    def error(nin: str) -> tuple[str, str, str]:
        headers, body = by_nin[nin]
        assert body is None
        return headers["esb_status"], headers["esb_reason"], headers.get("esb_message", "")

    assert error("20000000000000000001") == (
        "provider-error", "provider-error", "NIN database offline"
    )  # fmt: skip
    status, reason, message = error("20000000000000000002")
    assert (status, reason) == ("provider-error", "provider-unavailable")
    assert "HTTP 503" in message
    headers, body = by_nin["20000000000000000003"]
    assert (headers["esb_status"], body["nin"]) == ("answered", "20000000000000000003")
    assert error("20000000000000000004")[1:] == ("provider-signature", "the answer is not signed")
    assert error("20000000000000000005")[1] == "provider-signature"
    status, reason, message = error("20000000000000000006")
    assert reason == "invalid-answer"
    assert "valid" in message
    assert error("20000000000000000007")[1:] == (
        "invalid-answer", "the answer is over the size limit"
    )  # fmt: skip

    # What the provider received: the GovESB provider format, signed by the bus (it answers
    # 401 otherwise), the request id without dashes; retries as configured (3 attempts).
    ids = {nin: requests.govesb_request_id(r) for nin, (r, _, _) in zip(nins, routed, strict=True)}
    assert nida.unsigned_requests == 0
    assert nida.bodies[ids[KNOWN_NIN]] == {
        "esbBody": {"nin": KNOWN_NIN}, "requestId": ids[KNOWN_NIN], "apiCode": "VERIFY_NIN"
    }  # fmt: skip
    assert nida.calls[ids["20000000000000000002"]] == 3
    assert nida.calls[ids["20000000000000000003"]] == 3
    metrics = connector.metrics()
    assert 'outcome="provider-unavailable",provider="nida"} 1.0' in metrics.replace(
        'api="VERIFY_NIN",', ""
    )

    # A request read after its ticket's last moment: the bus would refuse any answer, so the
    # provider is not called and none is sent (the offset still moves on).
    [(expired, partition, offset)] = await route(
        kafka, registry, ["20000000000000000008"], deadline_s=-2, late_s=1
    )
    await committed_past(kafka, partition, offset)
    assert requests.govesb_request_id(expired) not in nida.calls
    found = await connector_answers(kafka, {requests.answer_id(expired)}, 3)
    assert found == []
    assert 'outcome="expired"' in connector.metrics()


async def test_a_slow_provider_does_not_hold_the_others(
    kafka: str, registry: str, nida: LegacyNida, start_connector
) -> None:
    nida.behaviour = {"20000000000000000010": "hold"}
    await start_connector()
    routed = await route(kafka, registry, ["20000000000000000010", KNOWN_NIN], deadline_s=60)
    # The second request is answered while the first is still held by the provider.
    quick = await answers(kafka, registry, [routed[1][0]])
    assert quick[routed[1][0]][0]["esb_status"] == "answered"
    assert not nida.released.is_set()
    nida.released.set()
    held = await answers(kafka, registry, [routed[0][0]])
    assert held[routed[0][0]][0]["esb_status"] == "answered"


async def test_a_connector_killed_mid_request_is_replaced_and_the_request_answered_once(
    kafka: str, registry: str, nida: LegacyNida, start_connector
) -> None:
    nida.behaviour = {"20000000000000000020": "hold"}
    first = await start_connector()
    [(request_id, partition, offset)] = await route(
        kafka, registry, ["20000000000000000020"], deadline_s=90
    )
    dashless = requests.govesb_request_id(request_id)
    async with asyncio.timeout(60):
        while not nida.calls[dashless]:
            nida.called.clear()
            await nida.called.wait()
    await asyncio.to_thread(first.kill)  # the request is in flight, no answer sent
    nida.released.set()
    second = await start_connector()
    got = await answers(kafka, registry, [request_id])
    assert got[request_id][0]["esb_status"] == "answered"
    assert got[request_id][1]["nin"] == "20000000000000000020"
    # Answered once: the offset of the request is committed past it, so nobody answers it
    # again, and the one answer event on the topic is this connector's.
    await committed_past(kafka, partition, offset)
    assert nida.calls[dashless] == 2  # the killed connector's call, and its successor's
    assert "answered" in second.metrics()
    once = await answers(kafka, registry, [request_id])  # raises on a second answer
    assert once[request_id][0]["ce_time"] == got[request_id][0]["ce_time"]
