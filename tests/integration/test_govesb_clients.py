"""GovESB's public clients against a real gateway producing to the real broker.

The Node client ``govesb-connector-js`` 0.1.1 and the Python client ``govesb`` 2.1.0 run
unmodified, configured only as their READMEs say (keys, client id and secret, token and
engine URLs). e-GA's Java connector 0.1.5 cannot run here (it is not on Maven Central): its
exact bytes come from ``tests.corpus.govesb_clients``. Each push must land on
``esb.ingress.nida`` without the caller's token, and the client's own way of verifying must
accept the gateway's signed reply.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from connectors.gateway.govesb import signed_reply
from connectors.http_sink.delivery import basic_auth
from deploy.worker import DEMO_GATEWAY_KEY
from streams.client.consuming import assign_topics
from streams.contract.signing import load_private_key
from streams.registry.view import RegistryView
from streams.settings import KafkaSettings
from tests import govesb_clients, npm
from tests.corpus.govesb_clients import (
    NON_ASCII_NAME,
    connector_body,
    connector_data,
    java_verified_text,
    php_verified_text,
    python_verified_text,
)
from tests.corpus.malformed import CITIZEN, citizen_json, demo_key
from tests.integration.gateways import served_gateway

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http]
SECRET = "nida-govesb-client-secret"  # noqa: S105 - a test client's secret
BUS = load_private_key(DEMO_GATEWAY_KEY.read_text())  # the gateway signs its replies
NIDA = demo_key("nida")
PUSH = "/engine/esb/push-request"


@pytest.fixture
async def gateway(kafka: str, registry: str, applied_registry: Any) -> AsyncIterator[str]:
    view = RegistryView(KafkaSettings(bootstrap_servers=kafka))
    await view.start()
    try:
        async with served_gateway(view, kafka, registry, {"nida": SECRET}) as (port, _):
            yield f"http://127.0.0.1:{port}"
    finally:
        await view.stop()


@contextlib.asynccontextmanager
async def _ingress(kafka: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A reader of esb.ingress.nida from its end as it is now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        for partition in await assign_topics(consumer, ["esb.ingress.nida"], from_beginning=False):
            await consumer.position(partition)  # resolve "end" before anything is sent
        yield consumer
    finally:
        await consumer.stop()


async def _landed(consumer: AIOKafkaConsumer, *event_ids: str, wait_s: float = 20) -> list[Any]:
    """The records of ``event_ids``, in that order, once all are on the topic (those found
    after ``wait_s``, None for the others)."""
    found: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while len(found) < len(event_ids):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    for record in batch:
                        event_id = dict(record.headers).get("ce_id", b"").decode()
                        if event_id in event_ids:
                            found[event_id] = record
    return [found.get(event_id) for event_id in event_ids]


def _carries(record: Any, secret: str) -> bool:
    """Whether ``secret`` is anywhere in the record: value, key or any header."""
    parts = [record.value or b"", record.key or b""]
    parts += [name.encode() + value for name, value in record.headers]
    return any(secret.encode() in part for part in parts)


async def _token(http: aiohttp.ClientSession, url: str) -> str:
    # As connector 0.1.5 asks: HTTP Basic and the credentials in the form as well.
    form = {"client_id": "nida", "client_secret": SECRET, "grant_type": "client_credentials"}
    async with http.post(
        f"{url}/oauth/token", data=form, headers={"Authorization": basic_auth("nida", SECRET)}
    ) as response:
        body = await response.json()
        assert response.status == 200, body
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    return str(body["access_token"])


def _verified_by_every_style(reply: str) -> None:
    signature = json.loads(reply)["signature"]
    for style in (java_verified_text, python_verified_text, php_verified_text):
        assert BUS.public_key().verify(style(reply).encode(), signature), style.__name__


async def test_connector_015_raw_token_latin1_body_and_token_inside_the_data(
    kafka: str, gateway: str
) -> None:
    esb_body = citizen_json(lastName=NON_ASCII_NAME)
    async with aiohttp.ClientSession() as http, _ingress(kafka) as ingress:
        token = await _token(http, gateway)
        # esbPushRequest: Authorization is the raw token; the body ISO-8859-1, signed UTF-8.
        # The token inside the data is how its esbRequest and NIDA request sign it.
        pushes = [
            (connector_data(pushCode=CITIZEN, esbBody=esb_body), "application/json"),
            (connector_data(pushCode=CITIZEN, authorization=token, esbBody=esb_body),
             "application/json"),
            (connector_data(pushCode=CITIZEN, authorization=token,
                            esbBody=citizen_json(lastName=NON_ASCII_NAME)),
             "text/plain; charset=ISO-8859-1"),  # StringEntity's own Content-Type
        ]  # fmt: skip
        event_ids = []
        for text, content_type in pushes:
            body = connector_body(text, NIDA.sign(text.encode()))
            headers = {"Authorization": token, "Content-Type": content_type}
            async with http.post(f"{gateway}{PUSH}", data=body, headers=headers) as response:
                reply = (await response.read()).decode()
                assert response.status == 202, reply
            _verified_by_every_style(reply)
            event_ids.append(json.loads(reply)["data"]["esbBody"]["eventId"])
        for event_id, record in zip(event_ids, await _landed(ingress, *event_ids), strict=True):
            assert record is not None, event_id
            assert NON_ASCII_NAME.encode() in record.value  # Avro strings are UTF-8
            assert not _carries(record, token)

        # A byte changed after signing: refused, and nothing reaches the bus.
        text = connector_data(pushCode=CITIZEN, esbBody=citizen_json(lastName=NON_ASCII_NAME))
        tampered = connector_body(text, NIDA.sign(text.encode())).replace(b"Zuhura", b"Zuhurb")
        for content_type in ("text/plain; charset=ISO-8859-1", "application/json"):
            headers = {"Authorization": token, "Content-Type": content_type}
            async with http.post(f"{gateway}{PUSH}", data=tampered, headers=headers) as r:
                assert (r.status, (await r.json())["error"]) == (401, "invalid_signature")
        # Another institution's token, or none, inside nida's signed data.
        text = connector_data(pushCode=CITIZEN, authorization="not-a-token", esbBody=esb_body)
        body = connector_body(text, NIDA.sign(text.encode()))
        headers = {"Authorization": token, "Content-Type": "application/json"}
        async with http.post(f"{gateway}{PUSH}", data=body, headers=headers) as r:
            assert (r.status, (await r.json())["error"]) == (401, "invalid_token")


async def test_the_node_client_pushes_and_verifies_the_reply_itself(
    kafka: str, gateway: str
) -> None:
    try:
        node_modules = await asyncio.to_thread(govesb_clients.install_node_client)
    except npm.NodeUnavailable as error:
        pytest.skip(str(error))
    esb_body = citizen_json(lastName=NON_ASCII_NAME)
    config = {
        "clientPrivateKey": NIDA.to_base64_der(),
        "esbPublicKey": BUS.public_key().to_base64_der(),
        "clientId": "nida",
        "clientSecret": SECRET,
        "esbTokenUrl": f"{gateway}/oauth/token",
        "esbEngineUrl": f"{gateway}/engine/esb",
        "pushCode": CITIZEN,
        "esbBody": esb_body,
    }
    async with _ingress(kafka) as ingress:
        result = await asyncio.to_thread(govesb_clients.node_push, node_modules, config)
        assert result["verified"] is not None, "the Node client refused the reply's signature"
        verified = json.loads(result["verified"])
        assert verified["success"] is True
        [record] = await _landed(ingress, verified["esbBody"]["eventId"])
    assert record is not None
    assert NON_ASCII_NAME.encode() in record.value


async def test_the_node_client_verifies_every_reply_shape_reply_text_writes() -> None:
    try:
        node_modules = await asyncio.to_thread(govesb_clients.install_node_client)
    except npm.NodeUnavailable as error:
        pytest.skip(str(error))
    shapes = [
        {"success": True, "esbBody": {"name": NON_ASCII_NAME, "city": "Dar es Salaam"}},
        {"success": False, "esbBody": {}, "message": 'tab\t "quote" \\ slash / \u2028 end'},
        {"esbBody": {"b": 1, "10": "x", "2": "y", "a": [1, 2.5, 100.0, None, True, 0.001]}},
        {"esbBody": {"amount": 9007199254740991, "rate": 1234567.125, "nested": {"0": {}}}},
    ]
    replies = [signed_reply(shape, BUS) for shape in shapes]
    config = {"esbPublicKey": BUS.public_key().to_base64_der(), "replies": replies,
              "clientPrivateKey": NIDA.to_base64_der()}  # fmt: skip
    result = await asyncio.to_thread(govesb_clients.node_push, node_modules, config)
    assert [text is not None for text in result["verified"]] == [True] * len(shapes)


async def test_the_python_client_pushes_with_a_raw_token_and_its_ecc_verifies_the_reply(
    kafka: str, gateway: str
) -> None:
    try:
        client = await asyncio.to_thread(govesb_clients.install_python_client)
    except govesb_clients.ClientUnavailable as error:
        pytest.skip(str(error))
    config = {
        "clientId": "nida",
        "clientSecret": SECRET,
        "tokenUrl": f"{gateway}/oauth/token",
        "pushUrl": f"{gateway}{PUSH}",
        "pushCode": CITIZEN,
        "esbBody": citizen_json(lastName=NON_ASCII_NAME),
        "privateKey": base64.b64encode(NIDA.to_pem().encode()).decode(),  # as it loads keys
        "esbPublicKey": BUS.public_key().to_base64_der(),
    }
    async with _ingress(kafka) as ingress:
        result = await asyncio.to_thread(govesb_clients.python_push, client, config)
        document = json.loads(result["reply"])
        assert document["data"]["success"] is True, result["reply"]
        [record] = await _landed(ingress, document["data"]["esbBody"]["eventId"])
    assert record is not None
    assert NON_ASCII_NAME.encode() in record.value  # sent as \u00e9, published as UTF-8
    assert not _carries(record, result["token"])
    assert result["verified"] is True  # the package's own ECC.verify_payload
