"""The gateway's token endpoint and its answers under failure, over real HTTP on the real bus.

Secrets cannot be guessed at full speed: failed ``/oauth/token`` attempts are counted per
client id and per source address, and refused with 429 once spent. Issued tokens are
forgotten when they expire (``govesb_gateway_live_tokens`` drops). A 503 after a produce
timeout carries the id of the event to resend with, the one the client sent, the one the
gateway assigned, or the one derived from a signed GovESB push; an event the broker refuses for
good is a 502 without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from connectors.gateway.app import Gateway
from connectors.http_sink.delivery import basic_auth
from streams.client.consuming import assign_topics
from streams.registry.view import RegistryView
from streams.settings import KafkaSettings
from tests.corpus.malformed import citizen_json, push_data, push_text, signed, structured
from tests.integration.gateways import served_gateway

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http]
SECRETS = {"nida": f"nida-{uuid.uuid4().hex}", "rita": f"rita-{uuid.uuid4().hex}"}
FORM = {"grant_type": "client_credentials"}
# Long enough that nothing a test counted drains while it runs.
SLOW_REFILL = {"token_limit_period_s": 3600.0}


@pytest.fixture
async def view(kafka: str, applied_registry: Any) -> AsyncIterator[RegistryView]:
    view = RegistryView(KafkaSettings(bootstrap_servers=kafka))
    await view.start()
    yield view
    await view.stop()


async def _token_request(
    http: aiohttp.ClientSession, client_id: str, secret: str
) -> tuple[int, dict[str, Any], str | None]:
    async with http.post(
        "/oauth/token", data=FORM, headers={"Authorization": basic_auth(client_id, secret)}
    ) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


async def test_wrong_secrets_are_throttled_per_client_and_per_address(
    view: RegistryView, kafka: str, registry: str
) -> None:
    limits = {"token_failures_per_client": 10, "token_failures_per_ip": 100, **SLOW_REFILL}
    async with (
        served_gateway(view, kafka, registry, SECRETS, **limits) as (port, _),
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        started = time.monotonic()
        answers = [await _token_request(http, "nida", f"guess-{n}") for n in range(500)]
        took = time.monotonic() - started
        statuses = Counter(status for status, _, _ in answers)
        assert statuses == {401: 10, 429: 490}, (statuses, took)
        throttled = [(body["error"], retry) for status, body, retry in answers if status == 429]
        assert {error for error, _ in throttled} == {"rate_limited"}
        assert all(int(retry or 0) >= 1 for _, retry in throttled)
        # nida's client id is spent, whatever the secret: guessing right now gains nothing.
        status, body, _ = await _token_request(http, "nida", SECRETS["nida"])
        assert (status, body["error"]) == (429, "rate_limited")
        # Another client from the same address still gets its token, with exactly the four
        # fields GovESB's Java connector accepts.
        status, body, _ = await _token_request(http, "rita", SECRETS["rita"])
        assert status == 200, body
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}

        # Guessing other client ids from this address: 90 more failures spend its 100.
        answers = [await _token_request(http, f"guess-{n}", "x") for n in range(120)]
        assert Counter(status for status, _, _ in answers) == {401: 90, 429: 30}
        # ... and then nobody gets a token from it, nor in with a guessed API key.
        status, body, retry = await _token_request(http, "rita", SECRETS["rita"])
        assert (status, body["error"]) == (429, "rate_limited")
        assert int(retry or 0) >= 1
        async with http.post(
            "/v1/events", data=json.dumps(structured()),
            headers={"X-API-Key": "a-guess", "Content-Type": "application/cloudevents+json"},
        ) as response:  # fmt: skip
            assert response.status == 429


async def _live_tokens(http: aiohttp.ClientSession) -> float:
    async with http.get("/metrics") as response:
        text = await response.text()
    found = re.search(r"^govesb_gateway_live_tokens (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


async def test_expired_tokens_are_forgotten_and_tokens_per_client_are_limited(
    view: RegistryView, kafka: str, registry: str
) -> None:
    limits = {"token_ttl_s": 2, "tokens_per_client": 5, **SLOW_REFILL}
    async with (
        served_gateway(view, kafka, registry, SECRETS, **limits) as (port, state),
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        answers = [await _token_request(http, "nida", SECRETS["nida"]) for _ in range(6)]
        assert [status for status, _, _ in answers] == [200] * 5 + [429]
        assert answers[-1][1]["message"] == "too many tokens requested for this client"
        assert await _live_tokens(http) == 5
        token = answers[0][1]["access_token"]
        # Forgotten once expired: the gauge (and the map behind it) drops to zero.
        async with asyncio.timeout(20):
            while await _live_tokens(http) > 0:  # noqa: ASYNC110 - read over HTTP
                await asyncio.sleep(0.2)
        assert state.auth.live_tokens == 0
        async with http.post(
            "/v1/events", data=json.dumps(structured()),
            headers={"Authorization": f"Bearer {token}",
                     "Content-Type": "application/cloudevents+json"},
        ) as response:  # fmt: skip
            body = await response.json()
        assert (response.status, body["error"]) == (401, "invalid_token")
        assert "expired" in body["message"]


@contextlib.asynccontextmanager
async def _ingress_from_now(kafka: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        for partition in await assign_topics(consumer, ["esb.ingress.nida"], from_beginning=False):
            await consumer.position(partition)  # "the end" resolved now, before anything is sent
        yield consumer
    finally:
        await consumer.stop()


async def _records_with_id(consumer: AIOKafkaConsumer, event_id: str) -> list[Any]:
    """The records carrying ``event_id`` (awaited, at most 30 s, until there is one)."""
    found: list[Any] = []
    async with asyncio.timeout(30):
        while not found:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                found += [r for r in batch if dict(r.headers).get("ce_id") == event_id.encode()]
    return found


@contextlib.asynccontextmanager
async def _stalled_and_healthy(
    view: RegistryView, kafka: str, registry: str
) -> AsyncIterator[tuple[aiohttp.ClientSession, aiohttp.ClientSession, Gateway]]:
    """A gateway whose broker never acknowledges in time (a produce timeout of 1 µs) and a
    healthy one (the replica a client resends to), on the same bus."""
    async with (
        served_gateway(view, kafka, registry, SECRETS, produce_timeout_s=1e-6) as (stalled, _),
        served_gateway(view, kafka, registry, SECRETS) as (healthy, state),
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{stalled}") as first,
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{healthy}") as second,
    ):
        yield first, second, state


async def _post(
    http: aiohttp.ClientSession, path: str, body: str, content_type: str
) -> tuple[int, dict[str, Any], str | None]:
    headers = {"X-API-Key": SECRETS["nida"], "Content-Type": content_type}
    async with http.post(path, data=body, headers=headers) as response:
        return (
            response.status,
            json.loads(await response.read()),
            response.headers.get("Retry-After"),
        )


@pytest.mark.parametrize("sent_id", [False, True], ids=["server-assigned id", "client id"])
async def test_a_produce_timeout_answers_503_with_the_id_to_resend_with(
    view: RegistryView, kafka: str, registry: str, sent_id: bool
) -> None:
    event = structured(id=str(uuid.uuid4()) if sent_id else None)
    if not sent_id:
        del event["id"]
    async with (
        _stalled_and_healthy(view, kafka, registry) as (stalled, healthy, _),
        _ingress_from_now(kafka) as consumer,
    ):
        status, refused, retry = await _post(
            stalled, "/v1/events", json.dumps(event), "application/cloudevents+json"
        )
        assert (status, refused["error"], retry) == (503, "broker_unavailable", "5"), refused
        event_id = refused["id"]
        assert str(uuid.UUID(event_id)) == event_id
        if sent_id:
            assert event_id == event["id"]
        # The resend with that id is accepted under it: the pipeline keeps one event per id.
        status, accepted, _ = await _post(
            healthy, "/v1/events", json.dumps({**event, "id": event_id}),
            "application/cloudevents+json",
        )  # fmt: skip
        assert (status, accepted) == (202, {"id": event_id, "status": "accepted"})
        records = await _records_with_id(consumer, event_id)
        assert {dict(r.headers)["ce_source"] for r in records} == {event["source"].encode()}


async def test_a_push_after_a_produce_timeout_is_accepted_once_under_the_id_of_the_503(
    view: RegistryView, kafka: str, registry: str
) -> None:
    text = json.dumps(push_data(), separators=(",", ":"))
    body = push_text(text, signed(text))
    push = "/engine/esb/push-request"
    async with (
        _stalled_and_healthy(view, kafka, registry) as (stalled, healthy, _),
        _ingress_from_now(kafka) as consumer,
    ):
        status, refused, retry = await _post(stalled, push, body, "application/json")
        assert (status, refused["error"], retry) == (503, "broker_unavailable", "5"), refused
        event_id = refused["id"]
        status, accepted, _ = await _post(healthy, push, body, "application/json")
        assert status == 202, accepted
        assert accepted["data"]["esbBody"]["eventId"] == event_id
        status, replayed, _ = await _post(healthy, push, body, "application/json")
        assert (status, replayed["error"]) == (409, "replayed")
        assert await _records_with_id(consumer, event_id)


async def test_an_event_the_broker_refuses_for_good_is_a_502_without_an_id_to_resend_with(
    view: RegistryView, kafka: str, registry: str
) -> None:
    """Larger than the producer may send (1 MiB) yet within a generous body limit: refused
    before anything is sent, so resending it cannot help and no id is offered."""
    event = structured(data=citizen_json(district="D" * 1_200_000))
    async with (
        served_gateway(view, kafka, registry, SECRETS, max_body_bytes=3_000_000) as (port, _),
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        status, refused, retry = await _post(
            http, "/v1/events", json.dumps(event), "application/cloudevents+json"
        )
        assert (status, refused["error"], retry) == (502, "broker_refused", None), refused
        assert "MessageSizeTooLargeError" in refused["message"]
        assert "id" not in refused
        # The gateway goes on: an ordinary event right after is acknowledged.
        status, accepted, _ = await _post(
            http, "/v1/events", json.dumps(structured()), "application/cloudevents+json"
        )
        assert status == 202, accepted
