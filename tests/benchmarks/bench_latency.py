"""End-to-end latency, publish to legacy HTTP endpoint, at fixed offered rates (open loop).

    python -m tests.benchmarks.bench_latency [--repeat R] [--rates 200,1000] [--seconds S]

Registers the schemas and applies the example registry with utumishi's endpoint on this
machine, starts a real ``govesb worker`` and ``govesb connect http-sink --subscriber utumishi``
and serves utumishi's endpoint (GovESB format, bearer auth) in a child process of its own.
Then RITA publishes ``tz.go.rita.DeathRegistered`` events with the Publisher SDK at each fixed
rate for S seconds: event i is due at t0 + i/rate, computed up front, and its latency runs
from that *scheduled* time to its first arrival at the endpoint (CLOCK_MONOTONIC, shared by
both processes), so a sender that falls behind shows up as latency (no coordinated
omission). Every event has a ``deceasedNin``, so the pipeline routes it to utumishi over HTTP
(and to nida over Kafka). Per rate: p50, p95, p99 and max in ms (the median over the
repetitions of each repetition's percentile) and the achieved delivery rate; events lost
(never arrived) and how late the sender itself ran go to the extra facts. What earlier runs
left unread is skipped (the worker gets a consumer group of its own, utumishi's sink group is
moved to the end), so only this run's events are measured. Logs go to ``.cache/bench``.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from deploy.demo_legacy import SINK_TOKEN, registry_with_endpoint
from deploy.kafka.launcher import REPO, LauncherError, die_with_parent, free_port
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID, WorkerProcess, start_govesb, start_worker
from streams.client.publisher import Publisher
from streams.contract import topics
from streams.contract.jsonavro import from_json
from streams.contract.signing import load_private_key
from streams.registry.governance import register_catalog
from streams.registry.model import BusRegistry, load_registry
from streams.registry.sync import apply_registry
from streams.settings import KafkaSettings, SchemaRegistrySettings, TopicSettings
from tests.benchmarks import hops
from tests.benchmarks.common import (
    LOGS,
    BenchBus,
    ChildServer,
    Figure,
    Section,
    bench_bus,
    print_section,
    start_child_server,
)
from tests.groups import start_group_at_ends

DEATH = "tz.go.rita.DeathRegistered"
RATES = (200.0, 1000.0)
SECONDS = 10.0
TARGET_P99_MS_AT_200 = 100.0
QUIET_S = 15.0  # stop waiting for arrivals when none came for this long
WAIT_CAP_S = 300.0  # and never wait longer than this after the last send


# ----------------------------------------------------------------- the endpoint (child process)


def serve_endpoint(port: int, token: str) -> None:
    """Utumishi's legacy endpoint: the first arrival time of every event id.

    ``POST /engine/esb/push-request`` (what the sink calls), ``GET /arrivals`` (id ->
    CLOCK_MONOTONIC seconds), ``GET /count``, ``POST /reset``. Runs until terminated.
    """
    die_with_parent()
    arrivals: dict[str, float] = {}
    deliveries = [0]

    async def receive(request: web.Request) -> web.Response:
        arrived = time.monotonic()
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"data": {"success": False}}, status=401)
        body = await request.read()
        event_id = request.headers.get("ce-id") or json.loads(body)["data"]["requestId"]
        arrivals.setdefault(event_id, arrived)
        deliveries[0] += 1
        return web.json_response({"data": {"success": True}})

    async def report(_: web.Request) -> web.Response:
        return web.json_response({"arrivals": arrivals, "deliveries": deliveries[0]})

    async def count(_: web.Request) -> web.Response:
        return web.json_response({"events": len(arrivals), "deliveries": deliveries[0]})

    async def reset(_: web.Request) -> web.Response:
        arrivals.clear()
        deliveries[0] = 0
        return web.json_response({})

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/engine/esb/push-request", receive)
        app.router.add_get("/arrivals", report)
        app.router.add_get("/count", count)
        app.router.add_post("/reset", reset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


def start_endpoint(port: int) -> ChildServer:
    """``serve_endpoint`` in a child process (bounded by ``ChildServer.wait_ready``)."""
    return start_child_server(
        "the endpoint", "tests.benchmarks.bench_latency.serve_endpoint", port, SINK_TOKEN,
        log_name="latency-endpoint.log", ready_path="/count",
    )  # fmt: skip


# ----------------------------------------------------------------- the bus side


async def prepare(bus: BenchBus, endpoint_port: int) -> BusRegistry:
    """Register the schemas; apply the example registry, utumishi's endpoint on this machine."""
    registry, lint = load_registry(registry_with_endpoint(endpoint_port))
    if registry is None:
        raise LauncherError("; ".join(map(str, lint)))
    _, problems = await register_catalog(
        registry.catalog, AsyncSchemaRegistryClient({"url": bus.registry_url})
    )
    if problems:
        raise LauncherError("; ".join(map(str, problems)))
    await apply_registry(registry, KafkaSettings(bootstrap_servers=bus.bootstrap), TopicSettings())
    return registry


def start_sink(bus: BenchBus) -> WorkerProcess:
    """``govesb connect http-sink --subscriber utumishi``, as ``make demo`` starts it."""
    port = free_port()
    return start_govesb(
        ["connect", "http-sink", "--subscriber", "utumishi", "--web-port", str(port)],
        {
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": bus.bootstrap,
            "GOVESB_SCHEMA_REGISTRY__URL": bus.registry_url,
            "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
            "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID,
            "GOVESB_SECRETS__UTUMISHI_SINK_TOKEN": SINK_TOKEN,
        },
        LOGS / "latency-sink.log",
        port,
        lambda body: body["checks"]["consumer"]["partitions"] > 0,
    )


def rita_publisher(registry: BusRegistry, bus: BenchBus) -> Publisher:
    rita = registry.institutions["rita"]
    return Publisher.connect(
        institution="rita",
        system=rita.systems[0],
        key_id=rita.keys[0].id,
        key=load_private_key((REPO / "deploy" / "demo-keys" / "rita.key.pem").read_text()),
        kafka=KafkaSettings(bootstrap_servers=bus.bootstrap),
        schema_registry=SchemaRegistrySettings(url=bus.registry_url),
        catalog=registry.catalog,
    )


# ----------------------------------------------------------------- one offered load


@dataclass
class Trial:
    """What one run at one offered rate gave."""

    rate: float
    scheduled: int
    latencies_ms: list[float]  # of the events that arrived, sorted
    lost: int
    publish_failures: int
    duplicates: int  # deliveries beyond the first of an event (at-least-once)
    delivered_per_s: float
    sender_behind_ms: list[float]  # how late the sender started each publish, sorted
    hops_ms: dict[str, float] = field(default_factory=dict)  # hop -> median (ms)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the latencies, ``q`` in (0, 1]."""
        return _nearest_rank(self.latencies_ms, q)


def _nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def offered_load(
    publisher: Publisher,
    payload: dict[str, Any],
    endpoint: ChildServer,
    http: aiohttp.ClientSession,
    rate: float,
    seconds: float,
    kafka: KafkaSettings | None = None,
) -> Trial:
    """Publish ``rate * seconds`` events on a fixed schedule; wait for them at the endpoint."""
    n = max(1, round(rate * seconds))
    ids = [str(uuid.uuid4()) for _ in range(n)]
    base = f"7{uuid.uuid4().int % 10**4:04d}"  # entry numbers (keys) unique to this run
    payloads = [{**payload, "entryNumber": f"{base}{i:05d}"} for i in range(n)]
    async with http.post(f"{endpoint.base}/reset") as response:
        response.raise_for_status()
    t0 = time.monotonic() + 0.1
    due = [t0 + i / rate for i in range(n)]  # the schedule, fixed before the first send
    epoch = time.time() - time.monotonic()  # CLOCK_MONOTONIC -> epoch, for Kafka timestamps
    sends: list[asyncio.Task[str]] = []
    behind = [0.0] * n
    for i in range(n):
        wait = due[i] - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            behind[i] = -wait * 1000
        sends.append(asyncio.create_task(publisher.publish(DEATH, payloads[i], event_id=ids[i])))
    done, not_done = await asyncio.wait(sends, timeout=60)
    for task in not_done:
        task.cancel()
    failed = len(not_done) + sum(1 for task in done if task.exception() is not None)

    expected, seen, last_change = n - failed, -1, time.monotonic()
    deadline = time.monotonic() + WAIT_CAP_S
    while time.monotonic() < deadline:
        async with http.get(f"{endpoint.base}/count") as response:
            count = (await response.json())["events"]
        if count >= expected:
            break
        if count != seen:
            seen, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > QUIET_S:
            break
        await asyncio.sleep(0.2)
    async with http.get(f"{endpoint.base}/arrivals") as response:
        report = await response.json()
    arrivals: dict[str, float] = report["arrivals"]
    latencies = sorted(
        (arrivals[event_id] - scheduled) * 1000
        for event_id, scheduled in zip(ids, due, strict=True)
        if event_id in arrivals
    )
    if not latencies:
        raise RuntimeError(
            f"no event reached the endpoint at {rate:g}/s ({failed} publish failures); "
            f"see the logs in {LOGS}"
        )
    ours = [arrivals[event_id] for event_id in ids if event_id in arrivals]
    hops_ms: dict[str, float] = {}
    if kafka is not None:
        keys = {payloads[i]["entryNumber"]: i for i in range(n) if ids[i] in arrivals}
        sent = {key: (due[i] + epoch) * 1000 for key, i in keys.items()}
        arrived = {key: (arrivals[ids[i]] + epoch) * 1000 for key, i in keys.items()}
        hops_ms = await split_hops(kafka, sent, arrived)
    return Trial(
        rate=rate,
        scheduled=n,
        latencies_ms=latencies,
        lost=n - len(latencies),
        publish_failures=failed,
        duplicates=report["deliveries"] - len(arrivals),
        delivered_per_s=len(ours) / max(max(ours) - t0, 1e-9),
        sender_behind_ms=sorted(behind),
        hops_ms=hops_ms,
    )


HOPS = {  # the hop from the previous point to this topic (or to the endpoint), by name
    "publisher_and_worker": topics.ingress("rita"),
    "worker_to_deliver": topics.deliver("utumishi"),
    "sink": "out",
}


async def split_hops(
    kafka: KafkaSettings, sent: dict[str, float], arrived: dict[str, float]
) -> dict[str, float]:
    """Median of each hop, per business key, from the records' Kafka timestamps: scheduled
    send -> on the ingress topic (the publisher's work up to its producer), -> on the
    delivery topic (the publisher's linger, the worker), -> at the endpoint (the worker's
    linger, the sink)."""
    path = [t for t in HOPS.values() if t != "out"]
    found = await hops.stamps(kafka, path, sent, int(min(sent.values())) - 1000)
    medians = hops.median_hops(path, found, sent, arrived)
    return {name: medians[f"{a}->{b}"]
            for (name, b), a in zip(HOPS.items(), ["in", *path], strict=True)
            if f"{a}->{b}" in medians}  # fmt: skip


# ----------------------------------------------------------------- the benchmark


def _key(rate: float) -> str:
    return f"{rate:g}".replace(".", "_")


def summarise(trials: dict[float, list[Trial]], seconds: float) -> Section:
    section = Section(
        "end-to-end latency: publish -> worker -> HTTP sink -> legacy endpoint (open loop, "
        "from the scheduled send time)"
    )
    for rate, runs in trials.items():
        at = _key(rate)
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            section.add(
                f"e2e_{name}_ms_at_{at}",
                f"{name} at {rate:g}/s",
                Figure.of([t.percentile(q) for t in runs]),
                "ms",
            )
        section.add(
            f"e2e_max_ms_at_{at}",
            f"max at {rate:g}/s",
            Figure.of([t.latencies_ms[-1] for t in runs]),
            "ms",
        )
        section.add(
            f"delivered_per_s_at_{at}",
            f"delivered at {rate:g}/s offered",
            Figure.of([t.delivered_per_s for t in runs]),
            "events/s",
        )
        section.extra[f"events_at_{at}"] = runs[0].scheduled
        section.extra[f"lost_at_{at}"] = sum(t.lost for t in runs)
        section.extra[f"publish_failures_at_{at}"] = sum(t.publish_failures for t in runs)
        section.extra[f"duplicate_deliveries_at_{at}"] = sum(t.duplicates for t in runs)
        # The schedule holds when the sender keeps up; if not, its lateness is in the latency.
        section.extra[f"sender_p99_behind_ms_at_{at}"] = max(
            _nearest_rank(t.sender_behind_ms, 0.99) for t in runs
        )
        section.extra[f"sender_max_behind_ms_at_{at}"] = max(t.sender_behind_ms[-1] for t in runs)
        for hop in HOPS:
            spans = [t.hops_ms[hop] for t in runs if hop in t.hops_ms]
            if spans:
                section.add(f"hop_{hop}_p50_ms_at_{at}", f"hop {hop}, p50 at {rate:g}/s",
                            Figure.of(spans), "ms")  # fmt: skip
    section.extra["seconds_per_rate"] = seconds
    section.extra["repetitions"] = len(next(iter(trials.values())))
    if 200.0 in trials:
        p99 = Figure.of([t.percentile(0.99) for t in trials[200.0]]).median
        section.extra["target_p99_ms_at_200"] = TARGET_P99_MS_AT_200
        section.extra["meets_target_at_200"] = p99 < TARGET_P99_MS_AT_200
    return section


async def run(
    bus: BenchBus,
    repeat: int,
    *,
    rates: tuple[float, ...] = RATES,
    seconds: float = SECONDS,
    warm_up_s: float = 2.0,
) -> Section:
    """Worker, sink and endpoint up; each rate ``repeat`` times, interleaved; then all down."""
    LOGS.mkdir(parents=True, exist_ok=True)
    kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
    endpoint = start_endpoint(free_port())
    processes: list[WorkerProcess] = []
    started = time.monotonic()
    try:
        registry = await prepare(bus, endpoint.port)
        app_id = f"bench-latency-{uuid.uuid4().hex[:8]}"
        skipped = await start_group_at_ends(kafka.bootstrap_servers, app_id, "esb.ingress.")
        skipped += await start_group_at_ends(
            kafka.bootstrap_servers, topics.sink_group("utumishi"), "esb.deliver.utumishi"
        )
        processes.append(
            await asyncio.to_thread(
                start_worker, bus.bootstrap, bus.registry_url, LOGS / "latency-worker.log",
                app_id=app_id,
            )
        )  # fmt: skip
        processes.append(await asyncio.to_thread(start_sink, bus))
        samples = yaml.safe_load((registry.catalog.path.parent / "samples.yaml").read_text())
        death = registry.catalog.event_types[DEATH]
        payload = dict(from_json(death.schema, samples[DEATH]))
        assert payload["deceasedNin"], "the sample must be routed to utumishi"
        trials: dict[float, list[Trial]] = {rate: [] for rate in rates}
        connector = aiohttp.TCPConnector(limit=4)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            rita_publisher(registry, bus) as publisher,
        ):
            await endpoint.wait_ready(http)
            warm = await offered_load(publisher, payload, endpoint, http, 50, warm_up_s)
            if warm.lost:
                raise RuntimeError(f"{warm.lost} warm-up events never arrived; see {LOGS}")
            for _ in range(repeat):
                for rate in rates:
                    trials[rate].append(
                        await offered_load(publisher, payload, endpoint, http, rate, seconds, kafka)
                    )
                    await asyncio.sleep(1.0)  # let commits and timers settle between runs
        section = summarise(trials, seconds)
        section.extra["backlog_skipped"] = skipped
        section.extra["run_s"] = round(time.monotonic() - started, 1)
        return section
    finally:
        for process in reversed(processes):
            await asyncio.to_thread(process.stop)
        endpoint.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument(
        "--rates", default=",".join(f"{r:g}" for r in RATES), help="offered events/s, comma list"
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="seconds per rate")
    args = parser.parse_args()
    # Leader elections right after topics are created make aiokafka log transient errors that
    # it retries on its own; the processes' own logs are in .cache/bench.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    rates = tuple(float(r) for r in args.rates.split(","))
    with bench_bus() as bus:
        section = asyncio.run(run(bus, args.repeat, rates=rates, seconds=args.seconds))
    print_section(section)
    print(json.dumps(section.as_dict()))


if __name__ == "__main__":
    main()
