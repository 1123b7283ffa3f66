"""The request/reply half of ``make demo``: institutions calling each other's APIs.

NIDA serves ``VERIFY_NIN`` through a legacy HTTP endpoint this demo runs (GovESB provider
format: it verifies the bus's signature, 401 otherwise, and signs its answers with NIDA's demo
key), answered through ``govesb connect provider --institution nida``; TRA serves
``TIN_STATUS`` Kafka-natively with the SDK's ``Provider``. TRA calls VERIFY_NIN over HTTP
through the gateway as a legacy GovESB client would (token, signed request); moh calls it over
Kafka with the SDK's ``Requester``; brela calls TIN_STATUS. Some requests are refused, each
with its reason. The line ``requests: answered N/N, refused R (expected R), timed out T``
counts what came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from connectors.gateway.govesb import exact_data
from connectors.http_sink.delivery import basic_auth
from deploy.kafka.launcher import REPO, LocalBus, free_port
from deploy.worker import DEMO_BUS_KEY, DEMO_GATEWAY_ENV, WorkerProcess, client_secret, start_govesb
from streams.client.answering import Provider, ProviderFailure
from streams.client.requesting import Answer, Requester
from streams.contract import requests, topics
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore, encode
from streams.contract.envelope import new_envelope
from streams.contract.signing import PrivateKey, load_private_key, sign_event
from streams.settings import KafkaSettings, SchemaRegistrySettings

KEYS = REPO / "deploy" / "demo-keys"
NIDA_TOKEN = "demo-nida-api-token"  # noqa: S105 - the demo NIDA endpoint's bearer token
SAMPLES = yaml.safe_load((REPO / "schemas" / "samples.yaml").read_text())
CITIZEN = SAMPLES["tz.go.nida.CitizenRegistered"]
TIN = SAMPLES["TIN_STATUS.response"]


def _key(institution: str) -> PrivateKey:
    return load_private_key((KEYS / f"{institution}.key.pem").read_text())


class NidaEndpoint:
    """NIDA's legacy VERIFY_NIN API: GovESB provider format, as deployed providers speak it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bus_key = load_private_key(DEMO_BUS_KEY.read_text()).public_key()
        self.key = _key("nida")
        self.calls = 0
        self.unsigned = 0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/verify-nin"

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {NIDA_TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        text = await request.text()
        try:
            data_text = exact_data(text)
            signature = json.loads(text)["signature"]
            data = json.loads(data_text)
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "not a GovESB request"}, status=400)
        if not self.bus_key.verify(data_text.encode(), signature):
            self.unsigned += 1
            return web.json_response({"error": "the bus's signature does not verify"}, status=401)
        self.calls += 1
        nin = str(data.get("esbBody", {}).get("nin", ""))
        known = nin == CITIZEN["nin"]
        body = {
            "nin": nin,
            "valid": known,
            **(
                {k: CITIZEN[k] for k in ("firstName", "middleName", "lastName", "dateOfBirth")}
                | {"phoneNumber": CITIZEN.get("phoneNumber", "+255754123456"), "alive": True}
                if known
                else {}
            ),
        }
        answer = json.dumps({"success": True, "esbBody": body, "message": "OK"},
                            separators=(",", ":"))  # fmt: skip
        signed = f'{{"data":{answer},"signature":"{self.key.sign(answer.encode())}"}}'
        return web.Response(text=signed, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/verify-nin", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def start_provider_connector(bus: LocalBus) -> WorkerProcess:
    """``govesb connect provider --institution nida`` as a child process."""
    port = free_port()
    logs = REPO / ".cache" / "dev"
    logs.mkdir(parents=True, exist_ok=True)
    return start_govesb(
        ["connect", "provider", "--institution", "nida", "--web-port", str(port)],
        {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": bus.bootstrap,
            "GOVESB_SCHEMA_REGISTRY__URL": bus.registry_url,
            "GOVESB_DELIVERY_KEY_FILE": str(DEMO_BUS_KEY),
            **DEMO_GATEWAY_ENV,
            "GOVESB_SECRETS__NIDA_API_TOKEN": NIDA_TOKEN,
        },
        logs / "demo-provider-nida.log",
        port,
        lambda body: body["checks"]["consumer"]["partitions"] > 0,
    )


@dataclass
class Outcome:
    """One demo request and what came back."""

    who: str
    how: str
    api: str
    expect: str  # answered | refused:<reason>
    answer: Answer | None = None
    millis: float = 0.0


@dataclass
class RequestTally:
    """The demo's requests."""

    outcomes: list[Outcome] = field(default_factory=list)

    def line(self) -> str:
        """``requests: answered N/N, refused R (expected R), timed out T``."""
        sent = self.outcomes
        wanted = [o for o in sent if o.expect == "answered"]
        answered = sum(1 for o in wanted if o.answer and o.answer.success)
        refused = sum(1 for o in sent if o.answer and o.answer.status == "refused"
                      and o.expect == f"refused:{o.answer.reason}")  # fmt: skip
        expected = sum(1 for o in sent if o.expect.startswith("refused:"))
        timed_out = sum(1 for o in sent if o.answer and o.answer.status == "timed-out")
        return (f"requests: answered {answered}/{len(wanted)}, refused {refused} "
                f"(expected {expected}), timed out {timed_out}")  # fmt: skip

    @property
    def ok(self) -> bool:
        """Every request came back as expected."""
        return all(
            (o.answer is not None and (
                o.answer.success if o.expect == "answered"
                else f"refused:{o.answer.reason}" == o.expect))
            for o in self.outcomes
        )  # fmt: skip


async def _tin_status(body: Mapping[str, Any]) -> dict[str, Any]:
    if body["tin"] != TIN["tin"]:
        raise ProviderFailure("no taxpayer with this TIN")
    return dict(TIN)


@contextlib.asynccontextmanager
async def tra_provider(
    kafka: KafkaSettings, registry: SchemaRegistrySettings
) -> AsyncIterator[None]:
    """TRA's Kafka-native TIN_STATUS provider (the SDK's Provider), while inside."""
    stopping = asyncio.Event()
    provider = Provider.connect(
        institution="tra", system="itax", key_id="tra-3509e6ac2798", key=_key("tra"),
        handlers={"TIN_STATUS": _tin_status}, kafka=kafka, schema_registry=registry,
    )  # fmt: skip
    async with provider:
        serving = asyncio.create_task(provider.run(stopping))
        try:
            yield
        finally:
            stopping.set()
            await serving


async def _kafka_request(requester: Requester, outcome: Outcome, body: dict[str, Any]) -> Outcome:
    started = time.monotonic()
    outcome.answer = await requester.request(outcome.api, body, timeout=15)
    outcome.millis = (time.monotonic() - started) * 1000
    return outcome


async def _raw_request(
    requester: Requester, kafka: KafkaSettings, schemas: SchemaStore, outcome: Outcome,
    ce_type: str, value_type: Any, body: dict[str, Any],
) -> Outcome:  # fmt: skip
    """A request a broken system sends (moh's key, but another record or api code)."""
    schema_id = await schemas.id_for(value_type)
    value = encode(schema_id, value_type.parsed, body)
    request_id = requests.new_request_id()
    envelope = new_envelope("moh", "gothomis", ce_type, request_id, event_id=request_id)
    signature = sign_event(_key("moh"), envelope.id, envelope.source, envelope.type,
                           envelope.time, value)  # fmt: skip
    headers = [*envelope.signed("moh-563d2616bddc", signature).to_headers(),
               (requests.API_HEADER, outcome.api.encode())]  # fmt: skip
    requester.expect(request_id)
    producer = AIOKafkaProducer(**kafka.durable_producer_options())
    await producer.start()
    started = time.monotonic()
    try:
        await producer.send_and_wait(topics.ingress("moh"), value, key=request_id.encode(),
                                     headers=headers)  # fmt: skip
    finally:
        await producer.stop()
    outcome.answer = await requester.wait(request_id, 15)
    outcome.millis = (time.monotonic() - started) * 1000
    return outcome


async def _http_request(gateway_port: int, outcome: Outcome, body: dict[str, Any]) -> Outcome:
    """TRA's legacy system calls VERIFY_NIN through the gateway, as GovESB clients do."""
    base = f"http://127.0.0.1:{gateway_port}"
    tra = _key("tra")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/oauth/token", data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_auth("tra", client_secret("tra"))},
        ) as response:  # fmt: skip
            token = (await response.json())["access_token"]
        data = json.dumps({"apiCode": outcome.api, "esbBody": body}, separators=(",", ":"))
        signed = f'{{"data":{data},"signature":"{tra.sign(data.encode())}"}}'
        started = time.monotonic()
        async with http.post(
            f"{base}/engine/esb/request", data=signed,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as response:  # fmt: skip
            text = await response.text()
            status = response.status
    outcome.millis = (time.monotonic() - started) * 1000
    try:
        reply = json.loads(text)["data"]
    except (ValueError, KeyError, TypeError):
        reply = {"success": False, "message": f"internal: HTTP {status}: {text[:80]}"}
    success = reply.get("success") is True
    # A GovESB reply says why in its message, "<reason code>: <detail>" (always HTTP 200).
    reason, _, detail = str(reply.get("message") or "").partition(": ")
    if success:
        kind = "answered"
    elif reason == "timed-out":
        kind = "timed-out"
    elif reason.startswith(("provider-", "invalid-answer")):
        kind = "provider-error"
    else:
        kind = "refused"
    outcome.answer = Answer(
        success, str(reply.get("requestId", "")), reply.get("esbBody") if success else None,
        kind, None if success else reason, detail,
    )  # fmt: skip
    return outcome


async def request_flow(bus: LocalBus, gateway_port: int, console: Console) -> RequestTally:
    """Every demo request, over HTTP and Kafka; a table of what came back."""
    kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
    registry = SchemaRegistrySettings(url=bus.registry_url)
    catalog = Catalog.load()
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    schemas = SchemaStore(AsyncSchemaRegistryClient(registry.client_config()))
    tally = RequestTally()
    nin = {"nin": CITIZEN["nin"]}
    verify, tin = catalog.services["VERIFY_NIN"], catalog.services["TIN_STATUS"]

    def requester(who: str, system: str, key_id: str) -> Requester:
        return Requester.connect(
            institution=who, system=system, key_id=key_id, key=_key(who),
            kafka=kafka, schema_registry=registry, catalog=catalog,
        )  # fmt: skip

    async with tra_provider(kafka, registry), \
            requester("moh", "gothomis", "moh-563d2616bddc") as moh, \
            requester("brela", "ors", "brela-a24c4621961c") as brela:  # fmt: skip
        tally.outcomes += await asyncio.gather(
            _http_request(gateway_port, Outcome("tra", "HTTP gateway", "VERIFY_NIN",
                                                "answered"), nin),
            _http_request(gateway_port, Outcome("tra", "HTTP gateway", "VERIFY_NIN",
                                                "answered"), {"nin": "19000101000000000001"}),
            _kafka_request(moh, Outcome("moh", "Kafka SDK", "VERIFY_NIN", "answered"), nin),
            _kafka_request(moh, Outcome("moh", "Kafka SDK", "VERIFY_NIN", "answered"),
                           {"nin": "19000101000000000002"}),
            _kafka_request(brela, Outcome("brela", "Kafka SDK", "TIN_STATUS", "answered"),
                           {"tin": TIN["tin"]}),
            _kafka_request(brela, Outcome("brela", "Kafka SDK", "VERIFY_NIN",
                                          "refused:no-grant"), nin),
            _raw_request(moh, kafka, schemas,
                         Outcome("moh", "Kafka (raw)", "VERIFY_NIN", "refused:schema-mismatch"),
                         verify.request.name, tin.request, {"tin": TIN["tin"]}),
            _raw_request(moh, kafka, schemas,
                         Outcome("moh", "Kafka (raw)", "NO_SUCH_API", "refused:unknown-api"),
                         "tz.go.moh.NoSuchRequest", verify.request, nin),
        )  # fmt: skip
    table = Table(title="requests across the bus (esb.ingress -> esb.request -> provider -> "
                  "esb.reply)")  # fmt: skip
    for column in ("requester", "how", "api", "outcome", "reason / message", "ms", "answer"):
        table.add_column(column)
    for o in tally.outcomes:
        a = o.answer
        if a is None:
            continue
        good = a.success if o.expect == "answered" else f"refused:{a.reason}" == o.expect
        colour = "green" if good else "red"
        shown = json.dumps(a.body, ensure_ascii=False)[:60] if a.body else ""
        table.add_row(o.who, o.how, o.api, f"[{colour}]{a.status}[/{colour}]",
                      f"{a.reason or ''} {a.message}"[:60], f"{o.millis:.0f}", shown)  # fmt: skip
    console.print(table)
    return tally
