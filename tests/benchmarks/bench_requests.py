"""Request/reply round trip over the bus against a direct call to the same provider (open loop).

    python -m tests.benchmarks.bench_requests [--repeat R] [--rates 50,200] [--seconds S]

NIDA's legacy VERIFY_NIN endpoint (the demo's: GovESB provider format, it verifies the bus's
signature and signs its answers with NIDA's key) runs in a child process of its own. The bus
side is what ``make demo`` runs: a ``govesb worker``, ``govesb connect provider --institution
nida`` and ``govesb connect gateway``. TRA's legacy system calls ``POST /engine/esb/request``
(token, signed GovESB request) at a fixed rate for S seconds: request i is due at
t0 + i/rate, fixed up front, and its round trip runs from that scheduled time to the HTTP
answer (no coordinated omission). The baseline, run side by side at the same rate, is the
same provider called directly with the request the connector sends it (signed by the bus),
so the difference is what the bus adds: gateway, two pipeline passes (request and answer),
the connector and four Kafka hops. Per rate: p50, p95, p99 of both, and the bus's added
milliseconds at each. Every answer must be ``success: true``; failures are counted. Logs go
to ``.cache/bench``. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import yaml
from aiohttp import web
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink.delivery import basic_auth
from connectors.provider.exchange import provider_request
from deploy.demo_legacy import registry_with_endpoint
from deploy.demo_requests import (
    CITIZEN,
    NIDA_TOKEN,
    NidaEndpoint,
    start_provider_connector,
)
from deploy.kafka.launcher import REPO, LauncherError, free_port
from deploy.worker import (
    DEMO_BUS_KEY,
    DEMO_GATEWAY_ENV,
    WorkerProcess,
    client_secret,
    demo_clients,
    start_govesb,
    start_worker,
)
from streams.contract import topics
from streams.contract.signing import load_private_key
from streams.registry.governance import register_catalog
from streams.registry.model import load_registry
from streams.registry.sync import apply_registry
from streams.settings import KafkaSettings, TopicSettings
from tests.benchmarks import hops
from tests.benchmarks.common import (
    LOGS,
    BenchBus,
    ChildServer,
    Figure,
    Section,
    bench_bus,
    cpu_seconds,
    print_section,
    process_tree,
    start_child_server,
)
from tests.groups import start_group_at_ends

RATES = (50.0, 200.0)
SECONDS = 10.0
TARGET_P99_MS_AT_200 = 50.0
API = "VERIFY_NIN"


# ----------------------------------------------------------------- the provider (child process)


def serve_provider(port: int) -> None:
    """NIDA's VERIFY_NIN endpoint, as ``make demo`` runs it, plus ``GET /ready``."""

    async def main() -> None:
        nida = NidaEndpoint(port)
        app = web.Application()
        app.router.add_post("/api/verify-nin", nida.handle)
        app.router.add_get("/ready", lambda _: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def start_provider(port: int) -> ChildServer:
    return start_child_server(
        "the provider", "tests.benchmarks.bench_requests.serve_provider", port,
        log_name="requests-provider.log", ready_path="/ready",
    )  # fmt: skip


# ----------------------------------------------------------------- the bus side


async def prepare(bus: BenchBus, provider_port: int, rate: float) -> None:
    """Register the schemas; apply the example registry, NIDA's endpoint on this machine and
    TRA's grant allowing ``rate`` requests/s (the example's 100/s would refuse the rest)."""
    path = registry_with_endpoint(free_port(), provider_port)
    document = yaml.safe_load(path.read_text())
    grant = next(g for g in document["grants"] if g["id"] == "tra-verify-nin")
    grant["rate_per_s"] = max(grant["rate_per_s"], rate * 2)
    path = LOGS / "requests-registry.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    registry, lint = load_registry(path)
    if registry is None:
        raise LauncherError("; ".join(map(str, lint)))
    _, problems = await register_catalog(
        registry.catalog, AsyncSchemaRegistryClient({"url": bus.registry_url})
    )
    if problems:
        raise LauncherError("; ".join(map(str, problems)))
    await apply_registry(registry, KafkaSettings(bootstrap_servers=bus.bootstrap), TopicSettings())


def start_gateway(bus: BenchBus) -> tuple[WorkerProcess, int]:
    port = free_port()
    process = start_govesb(
        ["connect", "gateway", "--web-port", str(port)],
        {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": bus.bootstrap,
            "GOVESB_SCHEMA_REGISTRY__URL": bus.registry_url,
            **DEMO_GATEWAY_ENV,
            **demo_clients(["tra"]),
            # the per-institution limit (100/s by default) would refuse a part of 200/s
            "GOVESB_RATE_PER_S": "10000",
            "GOVESB_BURST": "10000",
        },
        LOGS / "requests-gateway.log",
        port,
        lambda body: body["status"] == "ok",
    )
    return process, port


# ----------------------------------------------------------------- one offered load


@dataclass
class Trial:
    """One run at one rate: round trips of the answered calls (ms, sorted), failures."""

    rate: float
    sent: int
    round_trips_ms: list[float]
    failures: int
    behind_ms: float  # the sender's worst lateness (it would show in the round trips)
    sent_ms: dict[str, float] = field(default_factory=dict)  # request id -> due (epoch ms)
    answered_ms: dict[str, float] = field(default_factory=dict)  # -> answer read (epoch ms)
    hops_ms: dict[str, float] = field(default_factory=dict)  # hop -> median (ms)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # process -> CPU ms per request

    def percentile(self, q: float) -> float:
        ordered = self.round_trips_ms
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _signed_requests(n: int) -> list[bytes]:
    """TRA's GovESB requests, signed up front (the client's cost is not the bus's)."""
    tra = load_private_key((REPO / "deploy" / "demo-keys" / "tra.key.pem").read_text())
    bodies = []
    for _ in range(n):
        data = json.dumps({"apiCode": API, "esbBody": {"nin": CITIZEN["nin"]}},
                          separators=(",", ":"))  # fmt: skip
        bodies.append(f'{{"data":{data},"signature":"{tra.sign(data.encode())}"}}'.encode())
    return bodies


def _direct_requests(n: int) -> list[bytes]:
    """What the provider connector sends NIDA for each request, signed by the bus."""
    bus = load_private_key(DEMO_BUS_KEY.read_text())
    return [
        provider_request({"nin": CITIZEN["nin"]}, str(uuid.uuid4()), API, bus).body
        for _ in range(n)
    ]


async def offered_load(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    bodies: list[bytes],
    rate: float,
) -> Trial:
    """POST ``bodies`` on a fixed schedule at ``rate``; the round trip of each answer."""
    n = len(bodies)
    t0 = time.monotonic() + 0.1
    due = [t0 + i / rate for i in range(n)]
    behind = 0.0
    epoch = time.time() - time.monotonic()  # monotonic -> epoch (for the Kafka timestamps)
    sent_ms: dict[str, float] = {}
    answered_ms: dict[str, float] = {}

    async def call(i: int) -> float | None:
        async with http.post(url, data=bodies[i], headers=headers) as response:
            text = await response.text()
        done = time.monotonic()
        try:
            data = json.loads(text)["data"]
        except (ValueError, KeyError, TypeError):
            return None
        if data.get("success") is not True:
            return None
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            request_id = str(uuid.UUID(data.get("requestId")))  # shown without dashes
            sent_ms[request_id] = (due[i] + epoch) * 1000
            answered_ms[request_id] = (done + epoch) * 1000
        return (done - due[i]) * 1000

    calls = []
    for i in range(n):
        wait = due[i] - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            behind = max(behind, -wait * 1000)
        calls.append(asyncio.create_task(call(i)))
    results = await asyncio.gather(*calls, return_exceptions=True)
    answered = sorted(r for r in results if isinstance(r, float))
    if not answered:
        raise RuntimeError(f"no call to {url} was answered at {rate:g}/s; see the logs in {LOGS}")
    return Trial(rate, n, answered, n - len(answered), behind, sent_ms, answered_ms)


HOPS = {  # the hop from the previous point to this topic (or to the answer), by name
    "gateway": topics.ingress("tra"),
    "worker_request": topics.request("nida"),
    "provider_connector": topics.ingress("nida"),
    "worker_answer": topics.reply("tra"),
    "gateway_answer": "out",
}


async def split_hops(kafka: KafkaSettings, trial: Trial) -> None:
    """The median of each hop of ``trial``'s round trips, from the records' Kafka timestamps
    (each hop ends when its process hands the record to its producer)."""
    if not trial.sent_ms:
        return
    path = [t for t in HOPS.values() if t != "out"]
    since = int(min(trial.sent_ms.values())) - 1000
    found = await hops.stamps(kafka, path, trial.sent_ms, since)
    medians = hops.median_hops(path, found, trial.sent_ms, trial.answered_ms)
    trial.hops_ms = {name: medians[f"{a}->{b}"]
                     for (name, b), a in zip(HOPS.items(), ["in", *path], strict=True)
                     if f"{a}->{b}" in medians}  # fmt: skip


async def _token(http: aiohttp.ClientSession, base: str) -> str:
    async with http.post(
        f"{base}/oauth/token", data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_auth("tra", client_secret("tra"))},
    ) as response:  # fmt: skip
        response.raise_for_status()
        return str((await response.json())["access_token"])


# ----------------------------------------------------------------- the benchmark


def _key(rate: float) -> str:
    return f"{rate:g}".replace(".", "_")


def summarise(bus: dict[float, list[Trial]], direct: dict[float, list[Trial]]) -> Section:
    section = Section(
        "request/reply round trip: gateway -> bus -> HTTP provider -> bus -> gateway, against "
        "a direct call to the same provider (open loop, from the scheduled send time)"
    )
    for rate in bus:
        at = _key(rate)
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            ours = [t.percentile(q) for t in bus[rate]]
            base = [t.percentile(q) for t in direct[rate]]
            section.add(f"request_{name}_ms_at_{at}", f"bus {name} at {rate:g}/s",
                        Figure.of(ours), "ms")  # fmt: skip
            section.add(f"direct_{name}_ms_at_{at}", f"direct {name} at {rate:g}/s",
                        Figure.of(base), "ms")  # fmt: skip
            section.add(
                f"request_added_{name}_ms_at_{at}", f"added by the bus, {name} at {rate:g}/s",
                Figure.of([o - b for o, b in zip(ours, base, strict=True)]), "ms",
            )  # fmt: skip
        section.extra[f"requests_at_{at}"] = bus[rate][0].sent
        section.extra[f"request_failures_at_{at}"] = sum(t.failures for t in bus[rate])
        section.extra[f"direct_failures_at_{at}"] = sum(t.failures for t in direct[rate])
        section.extra[f"sender_max_behind_ms_at_{at}"] = max(
            t.behind_ms for t in bus[rate] + direct[rate]
        )
        for name in bus[rate][0].cpu_ms:
            section.add(f"cpu_ms_per_request_{name}_at_{at}",
                        f"CPU of the {name} per request at {rate:g}/s",
                        Figure.of([t.cpu_ms[name] for t in bus[rate]]), "ms")  # fmt: skip
        for hop in HOPS:
            spans = [t.hops_ms[hop] for t in bus[rate] if hop in t.hops_ms]
            if spans:
                section.add(f"hop_{hop}_p50_ms_at_{at}", f"hop {hop}, p50 at {rate:g}/s",
                            Figure.of(spans), "ms")  # fmt: skip
    if 200.0 in bus:
        p99 = Figure.of([t.percentile(0.99) for t in bus[200.0]]).median
        section.extra["target_request_p99_ms_at_200"] = TARGET_P99_MS_AT_200
        section.extra["meets_request_target_at_200"] = p99 < TARGET_P99_MS_AT_200
    return section


async def run(
    bus: BenchBus, repeat: int, *, rates: tuple[float, ...] = RATES, seconds: float = SECONDS
) -> Section:
    """Provider, worker, connector and gateway up; each rate ``repeat`` times, the direct
    baseline and the bus side by side; then all down."""
    LOGS.mkdir(parents=True, exist_ok=True)
    kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
    provider = start_provider(free_port())
    processes: list[WorkerProcess] = []
    started = time.monotonic()
    try:
        await prepare(bus, provider.port, max(rates))
        app_id = f"bench-requests-{uuid.uuid4().hex[:8]}"
        skipped = await start_group_at_ends(kafka.bootstrap_servers, app_id, "esb.ingress.")
        skipped += await start_group_at_ends(
            kafka.bootstrap_servers, topics.provider_group("nida"), "esb.request.nida"
        )
        processes.append(
            await asyncio.to_thread(
                start_worker, bus.bootstrap, bus.registry_url, LOGS / "requests-worker.log",
                app_id=app_id,
            )
        )  # fmt: skip
        processes.append(await asyncio.to_thread(start_provider_connector, bus))  # type: ignore[arg-type]
        gateway, gateway_port = await asyncio.to_thread(start_gateway, bus)
        processes.append(gateway)
        base = f"http://127.0.0.1:{gateway_port}"
        on_bus: dict[float, list[Trial]] = {rate: [] for rate in rates}
        cpu = {  # the processes whose CPU time is counted per request
            "worker": process_tree(processes[0].process.pid),
            "provider_connector": process_tree(processes[1].process.pid),
            "gateway": process_tree(gateway.process.pid),
            "broker": [bus.broker_pid] if bus.broker_pid else [],
        }
        cpu = {name: pids for name, pids in cpu.items() if pids}
        direct: dict[float, list[Trial]] = {rate: [] for rate in rates}
        connector = aiohttp.TCPConnector(limit=512)
        async with aiohttp.ClientSession(connector=connector) as http:
            await provider.wait_ready(http)
            token = await _token(http, base)
            gateway_call = (
                f"{base}/engine/esb/request",
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            provider_call = (
                f"{provider.base}/api/verify-nin",
                {"Authorization": f"Bearer {NIDA_TOKEN}", "Content-Type": "application/json"},
            )
            warm = await offered_load(http, *gateway_call, _signed_requests(100), 20)
            if warm.failures:
                raise RuntimeError(f"{warm.failures} warm-up calls failed; see {LOGS}")
            for _ in range(repeat):
                for rate in rates:
                    n = max(1, round(rate * seconds))
                    direct[rate].append(
                        await offered_load(http, *provider_call, _direct_requests(n), rate)
                    )
                    bodies = _signed_requests(n)
                    used = {name: sum(map(cpu_seconds, pids)) for name, pids in cpu.items()}
                    trial = await offered_load(http, *gateway_call, bodies, rate)
                    trial.cpu_ms = {
                        name: (sum(map(cpu_seconds, pids)) - used[name]) * 1000 / n
                        for name, pids in cpu.items()
                    }
                    await split_hops(kafka, trial)
                    on_bus[rate].append(trial)
                    await asyncio.sleep(1.0)
        section = summarise(on_bus, direct)
        section.extra["backlog_skipped"] = skipped
        section.extra["seconds_per_rate"] = seconds
        section.extra["run_s"] = round(time.monotonic() - started, 1)
        return section
    finally:
        for process in reversed(processes):
            await asyncio.to_thread(process.stop)
        provider.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument(
        "--rates", default=",".join(f"{r:g}" for r in RATES), help="requests/s, comma list"
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="seconds per rate")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    rates = tuple(float(r) for r in args.rates.split(","))
    with bench_bus() as bus:
        section = asyncio.run(run(bus, args.repeat, rates=rates, seconds=args.seconds))
    print_section(section)
    print(json.dumps(section.as_dict()))


if __name__ == "__main__":
    main()
