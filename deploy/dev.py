"""``make demo`` (what ``make demo`` runs): the whole bus on this machine, a stream flowing.

Starts, and stops again on exit or Ctrl-C (only what it started):
1. a real Kafka broker and Apicurio registry from the cached Maven jars;
2. the catalogue's schemas and ``deploy/registry.example.yaml`` (utumishi's endpoint pointed
   at the sample legacy payroll endpoint on this machine);
3. the sample legacy endpoint, NIDA's legacy VERIFY_NIN API, ``govesb worker``, ``govesb
   connect http-sink --subscriber utumishi``, ``govesb connect gateway``, ``govesb connect
   provider --institution nida``;
4. a real Prometheus server scraping those processes with the production alert rules;
5. ``govesb portal``, whose URL and demo sign-ins are printed.

Then a stream of events (``--events`` valid, ``--invalid`` invalid, ``--rate`` per second)
flows with a live view, a legacy system pushes GovESB-format events through the gateway,
institutions call each other's APIs over HTTP and Kafka (:mod:`deploy.demo_requests`, whose
``requests: answered N/N, refused R (expected R), timed out T`` line comes just before the
last), and a summary follows. The last line is ``delivered: D/E, rejected: R (expected R),
lost: L``, every number counted from what arrived. ``--keep-running`` then leaves the stack up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploy.demo_legacy import (
    DEMO_OPERATOR,
    RITA_SECRET,
    PayrollEndpoint,
    legacy_flow,
    registry_with_endpoint,
    start_connectors,
    start_portal,
)
from deploy.demo_requests import NidaEndpoint, RequestTally, request_flow, start_provider_connector
from deploy.dev_stream import Tally, follow, publish_stream
from deploy.kafka.launcher import REPO, LauncherError, LocalBus, free_port
from deploy.prometheus_local import LocalPrometheus
from deploy.worker import WorkerProcess, start_worker
from streams.audit.verify import verify_topic
from streams.contract.catalog import Catalog
from streams.registry.governance import register_catalog
from streams.registry.model import BusRegistry, load_registry
from streams.registry.sync import apply_registry
from streams.settings import KafkaSettings, SchemaRegistrySettings, TopicSettings

DEV_DIR = REPO / ".cache" / "dev"


@dataclass(frozen=True)
class DevOptions:
    """What ``make demo`` sends and whether it stays up afterwards."""

    events: int = 120
    invalid: int = 10
    rate: float = 40.0
    keep_running: bool = False
    quiet_s: float = 30.0  # give up waiting when nothing new arrives for this long


@dataclass
class Stack:
    """Everything ``make demo`` started."""

    bus: LocalBus
    registry: BusRegistry
    endpoint: PayrollEndpoint
    worker: WorkerProcess
    sink: WorkerProcess
    gateway: WorkerProcess
    provider: WorkerProcess
    nida: NidaEndpoint
    prometheus: LocalPrometheus
    portal: WorkerProcess

    @property
    def portal_sign_in(self) -> str:
        """The portal's URL and its demo sign-ins."""
        return (
            f"http://127.0.0.1:{self.portal.web_port}/  (sign in as institution rita / "
            f"{RITA_SECRET}, or as operator {DEMO_OPERATOR[0]} / {DEMO_OPERATOR[1]})"
        )

    def urls(self) -> list[tuple[str, str]]:
        """(what, where) for every service of the stack."""
        local = "http://127.0.0.1"
        return [
            ("Kafka bootstrap", self.bus.bootstrap),
            ("schema registry (Confluent API)", self.bus.registry_url),
            ("worker health / metrics", f"{local}:{self.worker.web_port}/health  /metrics"),
            ("HTTP sink (utumishi)", f"{local}:{self.sink.web_port}/health  /metrics"),
            ("gateway", f"{local}:{self.gateway.web_port}  (/openapi.json, /health, /metrics)"),
            ("legacy payroll endpoint", self.endpoint.url),
            ("provider connector (nida)", f"{local}:{self.provider.web_port}/health  /metrics"),
            ("NIDA's legacy VERIFY_NIN API", self.nida.url),
            ("Prometheus", f"{self.prometheus.url}  (/targets, /alerts)"),
            ("portal", self.portal_sign_in),
        ]


async def prepare(bus: LocalBus, console: Console, legacy_port: int, nida_port: int) -> BusRegistry:
    """Register the schemas; apply the example registry, utumishi's endpoint on this machine."""
    catalog = Catalog.load()
    _, problems = await register_catalog(
        catalog, AsyncSchemaRegistryClient({"url": bus.registry_url})
    )
    registry, lint = load_registry(registry_with_endpoint(legacy_port, nida_port))
    if problems or registry is None:
        raise LauncherError("; ".join(map(str, [*problems, *lint])))
    await apply_registry(registry, KafkaSettings(bootstrap_servers=bus.bootstrap), TopicSettings())
    console.print(
        f"registered {len(catalog)} event types; applied {len(registry.institutions)} "
        f"institutions, {len(registry.subscriptions)} agreements, {len(registry.services)} "
        f"services, {len(registry.grants)} grants"
    )
    return registry


def start_stack(bus: LocalBus, console: Console, stop: contextlib.ExitStack) -> Stack:
    """Schemas, registry, processes and Prometheus; each registered on ``stop``."""
    legacy_port, nida_port = free_port(), free_port()
    registry = asyncio.run(prepare(bus, console, legacy_port, nida_port))
    DEV_DIR.mkdir(parents=True, exist_ok=True)
    worker = start_worker(bus.bootstrap, bus.registry_url, DEV_DIR / "worker.log")
    stop.callback(worker.stop)
    sink, gateway = start_connectors(bus)
    stop.callback(sink.stop)
    stop.callback(gateway.stop)
    provider = start_provider_connector(bus)
    stop.callback(provider.stop)
    console.print("worker, HTTP sink (utumishi), gateway and provider connector (nida) ready")
    prometheus = LocalPrometheus(
        DEV_DIR / "prometheus",
        {
            "govesb-worker": [f"127.0.0.1:{worker.web_port}"],
            "govesb-sink": [f"127.0.0.1:{sink.web_port}"],
            "govesb-gateway": [f"127.0.0.1:{gateway.web_port}"],
            "govesb-provider": [f"127.0.0.1:{provider.web_port}"],
        },
    ).start()
    stop.callback(prometheus.stop)
    console.print(f"Prometheus ready at {prometheus.url}")
    portal = start_portal(
        bus,
        {
            "worker": worker.web_port,
            "sink": sink.web_port,
            "gateway": gateway.web_port,
            "provider": provider.web_port,
        },
    )
    stop.callback(portal.stop)
    stack = Stack(bus, registry, PayrollEndpoint(legacy_port), worker, sink, gateway, provider,
                  NidaEndpoint(nida_port), prometheus, portal)  # fmt: skip
    console.print(f"portal ready at {stack.portal_sign_in}", highlight=False)
    return stack


async def stream_with_live_view(console: Console, stack: Stack, options: DevOptions) -> Tally:
    """Publish the stream while following it to the delivery and rejection topics."""
    tally = Tally()
    kafka = KafkaSettings(bootstrap_servers=stack.bus.bootstrap)
    schema_registry = SchemaRegistrySettings(url=stack.bus.registry_url)
    topics = sorted(
        {f"esb.deliver.{s.subscriber}" for s in stack.registry.subscriptions.values()}
        | {f"esb.rejected.{i}" for i in stack.registry.institutions}
    )
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        published = progress.add_task("published", total=options.events + options.invalid)
        delivered = progress.add_task("delivered (Kafka + HTTP)", total=None)
        rejected = progress.add_task("rejected with a reason", total=options.invalid)

        def refresh() -> None:
            http = {
                (event_id, agreement)
                for (event_id, agreement) in tally.expected
                if agreement in tally.http_agreements and event_id in stack.endpoint.received
            }
            tally.delivered |= http
            progress.update(published, completed=tally.published)
            progress.update(
                delivered, completed=len(tally.delivered), total=len(tally.expected) or None
            )
            progress.update(rejected, completed=len(tally.rejected))

        follower = asyncio.create_task(follow(kafka, topics, tally, lambda: None))
        try:
            sender = asyncio.create_task(
                publish_stream(
                    stack.registry, kafka, schema_registry, tally,
                    events=options.events, invalid=options.invalid, rate=options.rate,
                )
            )  # fmt: skip
            last_change, seen = time.monotonic(), (0, 0)
            while True:
                await asyncio.sleep(0.25)
                refresh()
                if sender.done():
                    sender.result()  # a publishing failure ends the run with its error
                    if tally.lost == 0:
                        break
                now_seen = (len(tally.delivered), len(tally.rejected))
                if now_seen != seen:
                    last_change, seen = time.monotonic(), now_seen
                elif sender.done() and time.monotonic() - last_change > options.quiet_s:
                    break  # nothing new for a while: report what is missing
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    return tally


async def summary(console: Console, stack: Stack, tally: Tally) -> bool:
    """Tables of what arrived where, the audit check and Prometheus; True when all is well."""
    table = Table(title="delivered, per subscriber and agreement")
    for column in ("subscriber", "agreement", "delivery", "expected", "delivered"):
        table.add_column(column)
    expected: dict[tuple[str, str], int] = {}
    for (_, agreement), subscriber in tally.expected.items():
        expected[(subscriber, agreement)] = expected.get((subscriber, agreement), 0) + 1
    got = tally.by_agreement()
    for key in sorted(expected):
        delivery = "HTTP" if key[1] in tally.http_agreements else "Kafka"
        table.add_row(*key, delivery, str(expected[key]), str(got.get(key, 0)))
    console.print(table)

    table = Table(title="rejected, per reason (esb.rejected.<publisher>)")
    for column in ("reason", "expected", "rejected", "example detail"):
        table.add_column(column)
    for reason in sorted(set(tally.invalid.values()) | set(tally.rejected.values())):
        ids = [i for i, r in tally.rejected.items() if r == reason]
        table.add_row(
            reason,
            str(sum(1 for r in tally.invalid.values() if r == reason)),
            str(len(ids)),
            tally.rejected_detail.get(ids[0], "")[:70] if ids else "",
        )
    console.print(table)

    kafka = KafkaSettings(bootstrap_servers=stack.bus.bootstrap)
    reports = await verify_topic(kafka, "esb.audit")
    intact = all(r.intact for r in reports.values())
    console.print(
        f"audit: {sum(r.records for r in reports.values())} records in {len(reports)} chain(s), "
        + ("[green]intact[/green]" if intact else "[red]BROKEN[/red]")
    )
    health = await asyncio.to_thread(stack.prometheus.wait_all_up)
    all_up = bool(health) and all(h == "up" for h in health.values())
    await asyncio.sleep(2.5)  # one more scrape, so the totals below include the whole stream
    table = Table(title=f"Prometheus {stack.prometheus.url}: targets and what they report")
    for column in ("target / query", "health / value"):
        table.add_column(column)
    for target, state in sorted(health.items()):
        table.add_row(target, "[green]up[/green]" if state == "up" else f"[red]{state}[/red]")
    for label, promql in (
        ("events routed", 'sum(govesb_pipeline_events_total{outcome="routed"})'),
        ("events rejected", "sum(govesb_pipeline_rejections_total)"),
        ("HTTP deliveries", 'sum(govesb_sink_deliveries_total{outcome="delivered"})'),
        ("gateway requests", "sum(govesb_gateway_requests_total)"),
    ):
        values = await asyncio.to_thread(stack.prometheus.query, promql)
        table.add_row(label, str(int(values[0][1])) if values else "0")
    console.print(table)
    console.print(f"Prometheus targets: {'all up' if all_up else 'NOT all up'}")
    return intact and all_up


async def run(console: Console, stack: Stack, options: DevOptions) -> int:
    """The stream, the legacy push flow, the summary; then stay up if asked."""
    await stack.endpoint.start()
    await stack.nida.start()
    try:
        tally = await stream_with_live_view(console, stack, options)
        pushed, pushed_delivered = await legacy_flow(
            console, stack.endpoint, stack.gateway.web_port
        )
        calls: RequestTally = await request_flow(stack.bus, stack.gateway.web_port, console)
        healthy = await summary(console, stack, tally)
        delivered = len(set(tally.expected) & tally.delivered) + pushed_delivered
        expected = len(tally.expected) + pushed
        lost = tally.lost + (pushed - pushed_delivered)
        for event_id, (wanted, given) in tally.wrong.items():
            console.print(f"[red]{event_id}: expected {wanted}, rejected as {given}[/red]")
        console.print(calls.line(), highlight=False)
        console.print(
            f"delivered: {delivered}/{expected}, rejected: {len(tally.rejected)} "
            f"(expected {len(tally.invalid)}), lost: {lost}",
            highlight=False,
        )
        code = 0 if healthy and lost == 0 and not tally.wrong and calls.ok else 1
        if options.keep_running:
            table = Table(title="the stack stays up; Ctrl-C stops everything started here")
            table.add_column("service")
            table.add_column("where")
            for what, where in stack.urls():
                table.add_row(what, where)
            console.print(table)
            await asyncio.Event().wait()  # until Ctrl-C
        return code
    finally:
        await stack.nida.stop()
        await stack.endpoint.stop()


def main(options: DevOptions | None = None) -> int:
    """Start the stack, run the stream, stop everything; the process exit code."""
    options = options or DevOptions()
    # Leader elections right after topics are created make aiokafka log transient fetch
    # errors that it retries on its own; the processes' own logs are in .cache/dev and .cache.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)
    try:
        with contextlib.ExitStack() as stop:
            bus = stop.enter_context(LocalBus(say=lambda line: console.print(f"[dim]{line}[/]")))
            stack = start_stack(bus, console, stop)
            return asyncio.run(run(console, stack, options))
    except LauncherError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    except KeyboardInterrupt:
        console.print("stopped: everything the demo started is down")
        return 130


def _args(argv: list[str]) -> dict[str, Any]:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deploy.dev", description=__doc__)
    parser.add_argument("--events", type=int, default=DevOptions.events)
    parser.add_argument("--invalid", type=int, default=DevOptions.invalid)
    parser.add_argument("--rate", type=float, default=DevOptions.rate)
    parser.add_argument("--keep-running", action="store_true")
    return vars(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(DevOptions(**_args(sys.argv[1:]))))
