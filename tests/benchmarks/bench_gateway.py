"""HTTP gateway accepted events/s against a bare aiohttp handler, same requests, same run.

    python -m tests.benchmarks.bench_gateway [--events N] [--repeat R] [--clients C]

Registers the schemas, applies the example registry and starts a real ``govesb connect
gateway`` (RITA's client secret in ``GOVESB_CLIENTS__RITA``, rate limits out of the way), a
``govesb connect gateway --processes 2`` beside it (the same token key, so one token serves
both), and a bare aiohttp app in a child process of its own that reads each body and answers
202 with a small JSON, doing nothing else. One client in this process, C concurrent connections
(16), sends the three servers the very same N requests, pre-built: CloudEvents (structured JSON,
``tz.go.rita.DeathRegistered``) to ``/v1/events``, then GovESB pushes signed with RITA's key to
``/engine/esb/push-request``. The gateway answers 202 only after the broker acknowledged the
event (acks=all), so its figure is accepted events/s; the ratio gateway / bare is taken per
repetition (``gateway_processes_ratio``: the 2-process gateway over the same bare 1-process
handler). The CPU each server's processes use per accepted event is sampled from ``/proc``
too (``gateway_cpu_ratio``: bare CPU per event / gateway CPU per event, which holds still when
other work shares the machine), and the client's own (this process) per request. Every answer
must be 202: others are counted, and more than 1% fails the run.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink.delivery import basic_auth
from deploy.demo_legacy import RITA_SECRET
from deploy.kafka.launcher import REPO, LauncherError, die_with_parent, free_port
from deploy.worker import DEMO_GATEWAY_ENV, WorkerProcess, free_ports, start_govesb
from streams.client.consuming import assign_topics
from streams.contract import topics
from streams.contract.jsonavro import to_json
from streams.contract.signing import PrivateKey, load_private_key
from streams.registry.governance import register_catalog
from streams.registry.model import BusRegistry, load_registry
from streams.registry.sync import apply_registry
from streams.settings import KafkaSettings, TopicSettings
from tests.benchmarks.common import (
    LOGS,
    BenchBus,
    ChildServer,
    Figure,
    Section,
    bench_bus,
    cli_has_option,
    cpu_seconds,
    print_section,
    ratios,
    start_child_server,
)

DEATH = "tz.go.rita.DeathRegistered"
EVENTS = 2000
CLIENTS = 16
EXAMPLE_REGISTRY = REPO / "deploy" / "registry.example.yaml"
MAX_FAILED_SHARE = 0.01
EVENTS_PATH = "/v1/events"
PUSH_PATH = "/engine/esb/push-request"
PROCESSES = 2  # of the gateway measured beside the single process

Request = tuple[str, bytes, dict[str, str]]  # path, body, headers


# ----------------------------------------------------------------- the bare handler (child)


def serve_bare(port: int) -> None:
    """A handler that does nothing: read the body, answer 202 with a small JSON."""
    die_with_parent()

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "accepted"}, status=202)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def serve() -> None:
        app = web.Application()
        app.router.add_post(EVENTS_PATH, accept)
        app.router.add_post(PUSH_PATH, accept)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app)  # aiohttp's defaults, as the gateway has them
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


def start_bare(port: int) -> ChildServer:
    """``serve_bare`` in a child process (bounded by ``ChildServer.wait_ready``)."""
    return start_child_server(
        "the bare handler", "tests.benchmarks.bench_gateway.serve_bare", port,
        log_name="gateway-bare.log", ready_path="/health",
    )  # fmt: skip


# ----------------------------------------------------------------- the gateway side


async def prepare(bus: BenchBus) -> BusRegistry:
    """Register the schemas and apply the example registry (RITA, its key, its types)."""
    registry, lint = load_registry(EXAMPLE_REGISTRY)
    if registry is None:
        raise LauncherError("; ".join(map(str, lint)))
    _, problems = await register_catalog(
        registry.catalog, AsyncSchemaRegistryClient({"url": bus.registry_url})
    )
    if problems:
        raise LauncherError("; ".join(map(str, problems)))
    await apply_registry(registry, KafkaSettings(bootstrap_servers=bus.bootstrap), TopicSettings())
    return registry


def start_gateway(bus: BenchBus, token_key: str, processes: int = 1) -> WorkerProcess:
    """``govesb connect gateway [--processes N]`` as ``make demo`` starts it, with the rate
    limit lifted; with N > 1 process i serves its own ``/health`` on port + 1 + i."""
    port = free_ports(1 + processes) if processes > 1 else free_port()
    return start_govesb(
        [
            "connect",
            "gateway",
            "--web-port",
            str(port),
            *(["--processes", str(processes)] if processes > 1 else []),
        ],
        {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": bus.bootstrap,
            "GOVESB_SCHEMA_REGISTRY__URL": bus.registry_url,
            **DEMO_GATEWAY_ENV,
            "GOVESB_CLIENTS__RITA": RITA_SECRET,
            # The benchmark measures the gateway, not its per-institution token bucket.
            "GOVESB_RATE_PER_S": "1000000",
            "GOVESB_BURST": "1000000",
            "GOVESB_TOKEN_KEY": token_key,
        },
        LOGS / ("gateway.log" if processes == 1 else f"gateway-{processes}.log"),
        port,
        lambda body: body["status"] == "ok",
    )


async def gateway_pids(http: aiohttp.ClientSession, gateway: WorkerProcess, n: int) -> list[int]:
    """The supervising command and each of its ``n`` processes (from their own ``/health``,
    once all of them answer)."""
    pids = [gateway.process.pid]
    for index in range(n):
        url = f"http://127.0.0.1:{gateway.web_port + 1 + index}/health"
        async with asyncio.timeout(60):
            while True:
                try:
                    async with http.get(url) as response:
                        body = await response.json()
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        pids.append(int(body["checks"]["process"]["pid"]))
    return pids


async def ingress_end(kafka: KafkaSettings) -> int:
    """Records written to ``esb.ingress.rita`` so far (sum of the partitions' end offsets)."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await assign_topics(consumer, [topics.ingress("rita")], from_beginning=False)
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


# ----------------------------------------------------------------- the requests and the client


def _deaths(samples: dict[str, Any], n: int) -> Iterator[dict[str, Any]]:
    tag = f"8{uuid.uuid4().int % 10**4:04d}"  # entry numbers (Kafka keys) unique to the batch
    for index in range(n):
        yield {**samples[DEATH], "entryNumber": f"{tag}{index:05d}"}


def cloudevents(samples: dict[str, Any], n: int, token: str) -> list[Request]:
    """Structured-mode CloudEvents, one new id each."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents+json"}
    return [
        (
            EVENTS_PATH,
            json.dumps({
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "/institutions/rita/systems/crvs",
                "type": DEATH,
                "data": death,
            }).encode(),
            headers,
        )
        for death in _deaths(samples, n)
    ]  # fmt: skip


def pushes(samples: dict[str, Any], n: int, token: str, rita: PrivateKey) -> list[Request]:
    """GovESB pushes as legacy clients build them: compact ``data``, signed over its bytes.

    New signatures every call: the gateway refuses a signed push it already accepted.
    """
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    requests = []
    for death in _deaths(samples, n):
        data = json.dumps(
            {"pushCode": DEATH, "requestId": str(uuid.uuid4()), "esbBody": to_json(death)},
            separators=(",", ":"),
        )
        body = f'{{"data":{data},"signature":"{rita.sign(data.encode())}"}}'
        requests.append((PUSH_PATH, body.encode(), headers))
    return requests


@dataclass
class Drive:
    """One pass of the requests over one server."""

    events_per_s: float
    statuses: Counter[int] = field(default_factory=Counter)
    example: str = ""  # the body of one answer that was not 202
    server_cpu_us: float = 0.0  # CPU of the server's processes per accepted event
    client_cpu_us: float = 0.0  # CPU of this process (the client) per request

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 202)


async def drive(
    http: aiohttp.ClientSession,
    base: str,
    requests: list[Request],
    clients: int,
    server_pids: list[int] = [],  # noqa: B006 - read only
) -> Drive:
    """Send every request once, ``clients`` at a time; accepted (202) events per second, and
    the CPU ``server_pids`` used per accepted event."""
    pending = iter(requests)
    result = Drive(0.0)
    cpu = sum(map(cpu_seconds, server_pids))
    client_cpu = time.process_time()

    async def client() -> None:
        for path, body, headers in pending:  # one shared iterator: each request sent once
            async with http.post(f"{base}{path}", data=body, headers=headers) as response:
                text = await response.read()
                result.statuses[response.status] += 1
                if response.status != 202 and not result.example:
                    result.example = f"{response.status}: {text[:300].decode(errors='replace')}"

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), 600)
    result.events_per_s = result.statuses[202] / (time.perf_counter() - started)
    cpu = sum(map(cpu_seconds, server_pids)) - cpu
    result.server_cpu_us = 1e6 * cpu / max(1, result.statuses[202])
    result.client_cpu_us = 1e6 * (time.process_time() - client_cpu) / max(1, len(requests))
    return result


async def produce_ms_mean(http: aiohttp.ClientSession, metrics_urls: list[str]) -> float:
    """Mean time from encoding to the broker's acknowledgement over the run, in ms, from the
    gateway processes' ``govesb_gateway_produce_seconds`` histograms."""
    total_s, count = 0.0, 0.0
    for url in metrics_urls:
        async with http.get(url) as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith("govesb_gateway_produce_seconds_sum "):
                total_s += float(line.split()[1])
            elif line.startswith("govesb_gateway_produce_seconds_count "):
                count += float(line.split()[1])
    return round(1000 * total_s / max(1.0, count), 2)


async def token_for(http: aiohttp.ClientSession, base: str) -> str:
    async with http.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_auth("rita", RITA_SECRET)},
    ) as response:
        body = await response.json()
        if response.status != 200:
            raise LauncherError(f"the gateway refused the token request: {body}")
        return str(body["access_token"])


# ----------------------------------------------------------------- the benchmark


async def run(
    bus: BenchBus, repeat: int, *, events: int = EVENTS, clients: int = CLIENTS
) -> Section:
    """Gateway and bare handler up; both paths ``repeat`` times, interleaved; then all down."""
    LOGS.mkdir(parents=True, exist_ok=True)
    kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
    bare = start_bare(free_port())
    gateway: WorkerProcess | None = None
    gateways: WorkerProcess | None = None
    token_key = secrets.token_urlsafe(32)  # one for both gateways: one token serves both
    started = time.monotonic()
    try:
        registry = await prepare(bus)
        gateway = await asyncio.to_thread(start_gateway, bus, token_key)
        # an older tree (``--before``) may have no ``--processes``: then one process alone
        if await asyncio.to_thread(cli_has_option, ["connect", "gateway"], "--processes"):
            gateways = await asyncio.to_thread(start_gateway, bus, token_key, PROCESSES)
        samples = yaml.safe_load((registry.catalog.path.parent / "samples.yaml").read_text())
        rita = load_private_key((REPO / "deploy" / "demo-keys" / "rita.key.pem").read_text())
        servers = {
            "gateway": f"http://127.0.0.1:{gateway.web_port}",
            **({"gateway_processes": f"http://127.0.0.1:{gateways.web_port}"} if gateways else {}),
            "bare": f"http://127.0.0.1:{bare.port}",
        }
        pids = {"gateway": [gateway.process.pid], "bare": [bare.process.pid]}
        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        client_cpu: dict[tuple[str, str], list[float]] = {}
        statuses: dict[str, Counter[int]] = {side: Counter() for side in servers}
        examples: list[str] = []
        connector = aiohttp.TCPConnector(limit=clients * 2, limit_per_host=clients)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await bare.wait_ready(http)
            if gateways:
                pids["gateway_processes"] = await gateway_pids(http, gateways, PROCESSES)
            token = await token_for(http, servers["gateway"])
            before = await ingress_end(kafka)
            warm_accepted = 0
            for side, base in servers.items():  # warm up: connections, the schema id lookup
                for requests in (
                    cloudevents(samples, clients * 8, token),
                    pushes(samples, clients * 8, token, rita),
                ):
                    result = await drive(http, base, requests, clients)
                    warm_accepted += result.statuses[202] if side != "bare" else 0
            for _ in range(repeat):
                for path, build in (
                    ("events", lambda: cloudevents(samples, events, token)),
                    ("push", lambda: pushes(samples, events, token, rita)),
                ):
                    requests = build()  # the same requests for both sides, built before timing
                    for side, base in servers.items():
                        result = await drive(http, base, requests, clients, pids[side])
                        rates.setdefault((side, path), []).append(result.events_per_s)
                        cpu.setdefault((side, path), []).append(result.server_cpu_us)
                        client_cpu.setdefault((side, path), []).append(result.client_cpu_us)
                        statuses[side].update(result.statuses)
                        if result.example:
                            examples.append(f"{side} {path}: {result.example}")
                        if result.failed > MAX_FAILED_SHARE * len(requests):
                            raise RuntimeError(
                                f"{side} answered {result.failed} of {len(requests)} {path} "
                                f"requests with other than 202: {dict(result.statuses)}; "
                                f"e.g. {result.example}; see {LOGS}"
                            )
            added = await ingress_end(kafka) - before
            produce_ms = {"gateway": await produce_ms_mean(http, [f"{servers['gateway']}/metrics"])}
            if gateways:
                produce_ms["gateway_processes"] = await produce_ms_mean(http, [
                    f"http://127.0.0.1:{gateways.web_port + 1 + i}/metrics"
                    for i in range(PROCESSES)
                ])  # fmt: skip
        section = Section(
            f"HTTP gateway (1 and {PROCESSES} processes): accepted events/s ({clients} clients) "
            "vs a bare aiohttp handler"
        )
        for path, what in (("events", "CloudEvents /v1/events"), ("push", "GovESB push")):
            infix = "" if path == "events" else "_push"
            gateway_rate, bare_rate = rates[("gateway", path)], rates[("bare", path)]
            section.add(
                f"bare_handler{infix}_events_per_s",
                f"bare handler, {what}",
                Figure.of(bare_rate),
                "events/s",
            )
            section.add(
                f"gateway{infix}_events_per_s", f"gateway, {what}", Figure.of(gateway_rate),
                "events/s",
            )  # fmt: skip
            section.add(
                f"gateway{infix}_ratio", f"gateway / bare, {what}",
                ratios(gateway_rate, bare_rate), "x",
            )  # fmt: skip
            gateway_cpu, bare_cpu = cpu[("gateway", path)], cpu[("bare", path)]
            section.add(
                f"gateway{infix}_cpu_us_per_event", f"gateway CPU per event, {what}",
                Figure.of(gateway_cpu), "us",
            )  # fmt: skip
            section.add(
                f"bare_handler{infix}_cpu_us_per_event", f"bare handler CPU per event, {what}",
                Figure.of(bare_cpu), "us",
            )  # fmt: skip
            section.add(
                f"gateway{infix}_cpu_ratio", f"gateway / bare by server CPU per event, {what}",
                ratios(bare_cpu, gateway_cpu), "x",
            )  # fmt: skip
            section.add(
                f"client{infix}_cpu_us_per_request", f"the client's CPU per request, {what}",
                Figure.of(client_cpu[("gateway", path)]), "us",
            )  # fmt: skip
            if not gateways:
                continue
            processes_rate = rates[("gateway_processes", path)]
            section.add(
                f"gateway_processes{infix}_events_per_s", f"gateway x{PROCESSES}, {what}",
                Figure.of(processes_rate), "events/s",
            )  # fmt: skip
            section.add(
                f"gateway{infix}_processes_ratio", f"gateway x{PROCESSES} / bare, {what}",
                ratios(processes_rate, bare_rate), "x",
            )  # fmt: skip
            section.add(
                f"gateway{infix}_processes_scaling", f"gateway x{PROCESSES} / gateway x1, {what}",
                ratios(processes_rate, gateway_rate), "x",
            )  # fmt: skip
            section.add(
                f"gateway_processes{infix}_cpu_us_per_event",
                f"gateway x{PROCESSES} CPU per event, {what}",
                Figure.of(cpu[("gateway_processes", path)]), "us",
            )  # fmt: skip
        several = statuses.get("gateway_processes", Counter())
        accepted = statuses["gateway"][202] + several[202]
        section.extra |= {
            "events_per_repetition": events,
            "clients": clients,
            "repetitions": repeat,
            "gateway_non_202": sum(statuses["gateway"].values()) - statuses["gateway"][202],
            "gateway_processes_non_202": sum(several.values()) - several[202],
            "gateway_processes": PROCESSES if gateways else 1,
            # the wall figures are bound by clients / latency when this is large
            "produce_ms_mean": produce_ms,
            "produce_bound_events_per_s": {
                side: round(clients / max(1e-6, ms / 1000)) for side, ms in produce_ms.items()
            },
            "cores": os.cpu_count(),
            "load_average": [round(load, 2) for load in os.getloadavg()],
            "bare_non_202": sum(statuses["bare"].values()) - statuses["bare"][202],
            "gateway_statuses": {str(k): v for k, v in sorted(statuses["gateway"].items())},
            "non_202_examples": examples[:3],
            # every 202 must be a record on the bus (warm-up requests included)
            "gateway_accepted": accepted + warm_accepted,
            "ingress_records_added": added,
            "run_s": round(time.monotonic() - started, 1),
        }
        if added < accepted + warm_accepted:
            raise RuntimeError(
                f"the gateway accepted {accepted + warm_accepted} events; {added} are on the bus"
            )
        return section
    finally:
        for started_gateway in (gateway, gateways):
            if started_gateway is not None:
                await asyncio.to_thread(started_gateway.stop)
        bare.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=EVENTS, help="requests per side and path")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent connections")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    with bench_bus() as bus:
        section = asyncio.run(run(bus, args.repeat, events=args.events, clients=args.clients))
    print_section(section)
    print(json.dumps(section.as_dict()))


if __name__ == "__main__":
    main()
