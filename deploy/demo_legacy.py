"""The legacy half of ``make demo``: HTTP in, HTTP out, through the bus.

A legacy RITA system posts GovESB-format death pushes to the gateway (OAuth2 token, then
``POST /engine/esb/push-request`` signed with RITA's key over the exact ``data`` bytes); the
pipeline routes them under ``utumishi-deaths``; the HTTP sink delivers them, re-signed by the
bus, to utumishi's legacy payroll endpoint, which this demo runs. Each event is followed from
push to delivery.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from rich.console import Console
from rich.table import Table

from connectors.http_sink.delivery import basic_auth
from deploy.kafka.launcher import REPO, LauncherError, LocalBus, free_port
from deploy.worker import (
    DEMO_BUS_KEY,
    DEMO_BUS_KEY_ID,
    DEMO_GATEWAY_ENV,
    WorkerProcess,
    client_secret,
    demo_clients,
    start_govesb,
)
from streams.contract.catalog import Catalog
from streams.contract.jsonavro import to_json
from streams.contract.signing import load_private_key

SINK_TOKEN = "demo-utumishi-endpoint-token"  # noqa: S105 - the demo endpoint's token
RITA_SECRET = client_secret("rita")  # every demo institution's: demo-<id>-client-secret
# The portal's demo operator account (name, password).
DEMO_OPERATOR = ("operator", "demo-operator-password")
DEATH = "tz.go.rita.DeathRegistered"


class PayrollEndpoint:
    """Utumishi's legacy payroll system: receives GovESB pushes over HTTP."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: dict[str, tuple[float, dict[str, Any], str, str]] = {}
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/engine/esb/push-request"

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {SINK_TOKEN}":
            return web.json_response({"data": {"success": False}}, status=401)
        text = await request.text()
        data_text = text[len('{"data":') : text.rindex(',"signature"')]
        data = json.loads(data_text)
        signature = json.loads(text)["signature"]
        self.received[data["requestId"]] = (time.monotonic(), data, data_text, signature)
        return web.json_response({"data": {"success": True}})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/engine/esb/push-request", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def registry_with_endpoint(port: int, nida_port: int | None = None) -> Path:
    """The example registry with utumishi's endpoint on this machine's demo port (and NIDA's
    VERIFY_NIN endpoint on ``nida_port``)."""
    document = yaml.safe_load((REPO / "deploy" / "registry.example.yaml").read_text())
    document["catalog"] = str(REPO / "schemas" / "catalog.yaml")
    utumishi = next(i for i in document["institutions"] if i["id"] == "utumishi")
    utumishi["endpoint"]["url"] = f"http://127.0.0.1:{port}/engine/esb/push-request"
    if nida_port is not None:
        verify_nin = next(s for s in document["services"] if s["api_code"] == "VERIFY_NIN")
        verify_nin["endpoint"]["url"] = f"http://127.0.0.1:{nida_port}/api/verify-nin"
    path = REPO / ".cache" / "demo-registry.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _institutions() -> list[str]:
    document = yaml.safe_load((REPO / "deploy" / "registry.example.yaml").read_text())
    return [institution["id"] for institution in document["institutions"]]


def start_connectors(bus: LocalBus) -> tuple[WorkerProcess, WorkerProcess]:
    """The HTTP sink for utumishi and the gateway, as child processes."""
    common = {
        "GOVESB_KAFKA__BOOTSTRAP_SERVERS": bus.bootstrap,
        "GOVESB_SCHEMA_REGISTRY__URL": bus.registry_url,
        "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
        "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID,
    }
    sink_port, gateway_port = free_port(), free_port()
    logs = REPO / ".cache" / "dev"
    logs.mkdir(parents=True, exist_ok=True)
    sink = start_govesb(
        ["connect", "http-sink", "--subscriber", "utumishi", "--web-port", str(sink_port)],
        {**common, "GOVESB_SECRETS__UTUMISHI_SINK_TOKEN": SINK_TOKEN},
        logs / "demo-sink.log",
        sink_port,
        lambda body: body["checks"]["consumer"]["partitions"] > 0,
    )
    gateway = start_govesb(
        ["connect", "gateway", "--web-port", str(gateway_port)],
        {**common, **DEMO_GATEWAY_ENV, **demo_clients(_institutions())},
        logs / "demo-gateway.log",
        gateway_port,
        lambda body: body["status"] == "ok",
    )
    return sink, gateway


def start_portal(bus: LocalBus, processes: dict[str, int]) -> WorkerProcess:
    """``govesb portal``: rita signs in with its gateway client secret, the demo operator with
    its password; the processes' ``/health`` and ``/metrics`` (name to port) are shown."""
    from streams.audit.chain import SUBJECT_KEY_PURPOSE

    logs = REPO / ".cache" / "dev"
    database = logs / "portal-trace.sqlite"
    for suffix in ("", "-wal", "-shm"):  # a new bus each demo: the index starts afresh
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    subject_key = load_private_key(DEMO_BUS_KEY.read_text()).derive_key(SUBJECT_KEY_PURPOSE)
    port = free_port()
    return start_govesb(
        ["portal", "--web-port", str(port)],
        {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": bus.bootstrap,
            "GOVESB_CLIENTS__RITA": RITA_SECRET,
            f"GOVESB_OPERATORS__{DEMO_OPERATOR[0].upper()}": DEMO_OPERATOR[1],
            "GOVESB_TRACE__DATABASE": str(database),
            "GOVESB_TRACE__SUBJECT_KEY": subject_key.hex(),
            "GOVESB_REGISTRY_FILE": str(REPO / ".cache" / "demo-registry.yaml"),
            **{
                f"GOVESB_PROCESSES__{name.upper()}": f"http://127.0.0.1:{web_port}"
                for name, web_port in processes.items()
            },
        },
        logs / "demo-portal.log",
        port,
        lambda body: body["status"] == "ok",
    )


async def legacy_flow(
    console: Console, endpoint: PayrollEndpoint, gateway_port: int
) -> tuple[int, int]:
    """Push 3 deaths as a legacy GovESB client; follow each to the payroll endpoint.

    Returns (pushed, delivered to the endpoint).
    """
    catalog = Catalog.load()
    samples = yaml.safe_load((catalog.path.parent / "samples.yaml").read_text())
    rita = load_private_key((REPO / "deploy" / "demo-keys" / "rita.key.pem").read_text())
    bus_public = load_private_key(DEMO_BUS_KEY.read_text()).public_key()
    pushed: dict[str, float] = {}
    base = f"http://127.0.0.1:{gateway_port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_auth("rita", RITA_SECRET)},
        ) as response:
            token = (await response.json())["access_token"]
        for n in range(3):
            death = {**samples[DEATH], "entryNumber": f"90045{n:05d}"}
            push = json.dumps({"pushCode": DEATH, "esbBody": to_json(death)}, separators=(",", ":"))
            body = f'{{"data":{push},"signature":"{rita.sign(push.encode())}"}}'
            started = time.monotonic()
            async with http.post(
                f"{base}/engine/esb/push-request",
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ) as response:
                text = await response.text()
                if response.status != 202:
                    raise LauncherError(f"the gateway answered {response.status}: {text}")
            event_id = json.loads(text)["data"]["esbBody"]["eventId"]
            pushed[event_id] = started
    deadline = time.monotonic() + 60
    while set(pushed) - set(endpoint.received) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    table = Table(title="legacy push -> gateway -> pipeline -> HTTP sink -> legacy endpoint")
    for column in ("event id", "entry", "push to delivery", "bus signature", "fields delivered"):
        table.add_column(column)
    for event_id, started in pushed.items():
        arrival = endpoint.received.get(event_id)
        if arrival is None:
            table.add_row(event_id, "", "[red]not delivered[/red]", "", "")
            continue
        at, data, data_text, signature = arrival
        verified = bus_public.verify(data_text.encode(), signature)
        table.add_row(
            event_id,
            data["esbBody"]["entryNumber"],
            f"{(at - started) * 1000:.0f} ms",
            "[green]valid[/green]" if verified else "[red]INVALID[/red]",
            ", ".join(data["esbBody"]),
        )
    console.print(table)
    delivered = sum(1 for event_id in pushed if event_id in endpoint.received)
    console.print(f"legacy: pushed {len(pushed)}, delivered to the payroll endpoint {delivered}")
    return len(pushed), delivered
