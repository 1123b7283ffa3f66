"""Disaster Recovery drill: lose the primary site mid-stream, fail over, finish at the DR site.

Two local sites (a Kafka broker and a KafkaSQL Apicurio registry each), MirrorMaker 2 from
the primary to the DR site (``deploy/dr``), and the bus's worker, HTTP sink and gateway under
the drill's supervisor. A publishing system streams signed deaths through the Publisher SDK
and a legacy one through the gateway, recording every acknowledged event id; mid-stream the
whole primary (broker, registry, processes) is SIGKILLed; ``govesb dr failover`` switches to
the DR site; the supervisor restarts the processes there; publishers re-send what they
published since the newest replicated heartbeat (same ids) and carry on. The endpoint must
hold exactly the acknowledged ids. RPO and RTO are measured and printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from connectors.cli import app
from deploy.dr.drill import BusConfig, BusSupervisor, Site
from deploy.dr.mirror import MirrorMaker2, MirrorOptions
from deploy.kafka.launcher import LauncherError, free_port
from deploy.kafka.runtime import fetch_runtime
from streams.client.consuming import assign_topics
from streams.client.publisher import Publisher
from streams.contract.signing import load_private_key
from streams.dr.sites import ActiveSite
from streams.settings import REPO_ROOT, KafkaSettings, SchemaRegistrySettings
from tests.unit.pipeline_fixtures import CATALOG, KEY_IDS, SAMPLES, sample

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.registry,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.timeout(900),
]

DEATH = "tz.go.rita.DeathRegistered"
SYSTEM = "crvs-drill"
SOURCE = f"/institutions/rita/systems/{SYSTEM}"
TOKEN = "drill-endpoint-token"  # noqa: S105 - the drill endpoint's bearer token
RITA_SECRET = "drill-rita-secret"  # noqa: S105 - the drill's gateway client secret
EVENTS = 560  # in all: about 28 s of stream
KILL_AT = 360  # acknowledged events before the primary is lost
RATE = 20.0  # events per second, open loop
VIA_GATEWAY = 4  # every 4th event comes from the legacy system through the gateway
PUBLISH_BOUND_S = 5.0


class Endpoint:
    """Utumishi's payroll endpoint: records every arrival; de-duplicates by event id."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []  # (time.time(), ce-id)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        await request.read()
        self.arrivals.append((time.time(), request.headers.get("ce-id", "")))
        return web.json_response({"ok": True})

    @property
    def delivered(self) -> set[str]:
        return {event_id for _, event_id in self.arrivals}

    async def start(self) -> None:
        application = web.Application()
        application.router.add_post("/payroll/deaths", self.handle)
        self.runner = web.AppRunner(application, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/payroll/deaths"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Event:
    """One death to publish, with its id fixed up front so every retry keeps it."""

    n: int
    event_id: str
    via_gateway: bool

    @property
    def entry(self) -> str:
        return f"8{self.n:09d}"


@dataclass
class Stream:
    """Publishes the events at RATE; on a failure holds the rest until it is pointed at a new
    site, then re-sends the recent tail and the held events there, with their ids."""

    events: list[Event]
    gateway_url: str
    site: tuple[str, str]  # bootstrap, registry
    acked: dict[str, float] = field(default_factory=dict)  # event id -> time.time() of the ack
    sent: dict[str, Event] = field(default_factory=dict)
    held: list[Event] = field(default_factory=list)
    resent: int = 0
    errors: list[str] = field(default_factory=list)  # why sends failed (the first ones)
    down_at: float | None = None
    _resume: asyncio.Event = field(default_factory=asyncio.Event)
    _resend_since: float | None = None

    def resume(self, bootstrap: str, registry: str, resend_since: float | None) -> None:
        self.site = (bootstrap, registry)
        self._resend_since = resend_since
        self._resume.set()

    def _publisher(self) -> Publisher:
        return Publisher.connect(
            institution="rita",
            system=SYSTEM,
            key_id=KEY_IDS["rita"],
            key=load_private_key((REPO_ROOT / "deploy/demo-keys/rita.key.pem").read_text()),
            kafka=KafkaSettings(bootstrap_servers=self.site[0]),
            schema_registry=SchemaRegistrySettings(url=self.site[1]),
            catalog=CATALOG,
        )

    async def _send(self, publisher: Publisher, http: aiohttp.ClientSession, event: Event) -> bool:
        self.sent[event.event_id] = event
        try:
            if event.via_gateway:
                data = {**SAMPLES[DEATH], "entryNumber": event.entry, "firstName": f"G{event.n}"}
                cloudevent = {"specversion": "1.0", "id": event.event_id, "source": SOURCE,
                              "type": DEATH, "data": data}  # fmt: skip
                async with http.post(
                    self.gateway_url,
                    data=json.dumps(cloudevent),
                    headers={"X-API-Key": RITA_SECRET,
                             "Content-Type": "application/cloudevents+json"},
                    timeout=aiohttp.ClientTimeout(total=PUBLISH_BOUND_S),
                ) as response:  # fmt: skip
                    if response.status != 202:
                        self.errors.append(f"gateway {response.status}: {await response.text()}")
                        return False
            else:
                payload = sample(DEATH, entryNumber=event.entry, firstName=f"S{event.n}")
                async with asyncio.timeout(PUBLISH_BOUND_S):
                    await publisher.publish(DEATH, payload, event_id=event.event_id)
        except Exception as error:  # not acknowledged: held, and sent again with the same id
            self.errors.append(f"{type(error).__name__}: {error}")
            return False
        self.acked[event.event_id] = time.time()
        return True

    async def _send_until_acked(
        self, publisher: Publisher, http: aiohttp.ClientSession, event: Event, bound_s: float
    ) -> None:
        """At the DR site: the gateway may still be starting; retry with the same id."""
        deadline = time.monotonic() + bound_s
        while not await self._send(publisher, http, event):
            assert time.monotonic() < deadline, f"event {event.n} was never acknowledged"
            await asyncio.sleep(0.5)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with aiohttp.ClientSession() as http:
            publisher = self._publisher()
            await publisher.start()
            try:
                for n, event in enumerate(self.events):
                    if self.down_at is None:
                        await asyncio.sleep(max(0.0, started + n / RATE - loop.time()))
                        if await self._send(publisher, http, event):
                            continue
                        self.down_at = time.time()
                    self.held.append(event)
                    if not self._resume.is_set():
                        await asyncio.sleep(1 / RATE)  # the source system keeps producing
                        continue
                    # Pointed at the DR site: reconnect, re-send the tail, then what was held.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(publisher.stop(), 3)
                    publisher = self._publisher()
                    await publisher.start()
                    since = self._resend_since or 0.0
                    tail = [self.sent[i] for i, at in self.acked.items() if at >= since]
                    self.resent = len(tail)
                    for old in [*tail, *self.held]:
                        await self._send_until_acked(publisher, http, old, 120)
                    self.held.clear()
                    self.down_at, started = None, loop.time() - (n + 1) / RATE
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(publisher.stop(), 5)


def _registry_with_endpoint(url: str, directory: Path) -> Path:
    document = yaml.safe_load((REPO_ROOT / "deploy/registry.example.yaml").read_text())
    document["catalog"] = str(REPO_ROOT / "schemas/catalog.yaml")
    utumishi = next(i for i in document["institutions"] if i["id"] == "utumishi")
    utumishi["endpoint"] = {
        "url": url,
        "format": "cloudevents",
        "timeout_s": 5,
        "auth": {"type": "bearer", "secret_ref": "utumishi_sink_token"},
    }
    path = directory / "registry.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _govesb(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Run the real ``govesb`` as an operator would: (exit code, stdout, seconds)."""
    started = time.monotonic()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("govesb")), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout, time.monotonic() - started


async def _ids_in(bootstrap: str, topic: str) -> set[str]:
    """Event ids of every record of ``topic`` at ``bootstrap``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    found: set[str] = set()
    try:
        assigned = await assign_topics(consumer, [topic])
        end = await consumer.end_offsets(assigned)
        for partition in assigned:
            while await consumer.position(partition) < end[partition]:
                for batch in (await consumer.getmany(partition, timeout_ms=1000)).values():
                    found |= {dict(r.headers)["ce_id"].decode() for r in batch}
    finally:
        await consumer.stop()
    return found


async def _until(condition: Any, bound_s: float, what: str, detail: Any = list) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {bound_s:.0f}s: {what} {detail()}"
        await asyncio.sleep(0.2)


async def test_failover_to_the_dr_site_delivers_every_acknowledged_event(
    tmp_path: Path, test_environment: Any
) -> None:
    try:
        runtime = fetch_runtime()
    except LauncherError as error:
        if test_environment.ci:
            pytest.fail(f"CI=true and the Kafka/Apicurio runtime is missing: {error}")
        pytest.skip(f"the Kafka/Apicurio runtime is missing: {error}")
    primary = Site("primary", runtime, tmp_path / "primary")
    dr = Site("dr", runtime, tmp_path / "dr")
    endpoint = Endpoint()
    mirror: MirrorMaker2 | None = None
    supervisor: BusSupervisor | None = None
    streaming: asyncio.Task[None] | None = None
    state_file = tmp_path / "active-site.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        # ---- two sites, the registry applied at the primary, MirrorMaker 2 to the DR site
        both = [asyncio.to_thread(site.start) for site in (primary, dr)]
        await asyncio.gather(*both)
        await endpoint.start()
        options = ["--bootstrap", primary.bootstrap, "--schema-registry", primary.registry_url]
        runner = CliRunner()
        for command in (
            ["schemas", "register"],
            ["registry", "apply", str(_registry_with_endpoint(endpoint.url, tmp_path))],
        ):
            done = await asyncio.to_thread(runner.invoke, app, [*options, *command])
            assert done.exit_code == 0, done.output
        mirror = MirrorMaker2(
            runtime.kafka_lib,
            MirrorOptions(primary.bootstrap, dr.bootstrap).drill(),
            tmp_path / "mm2",
        )
        started = time.monotonic()
        wanted = ["esb.registry", "esb.ingress.rita", "esb.deliver.utumishi", "kafkasql-journal"]
        await asyncio.to_thread(mirror.start, 240.0, wanted)
        mirror_ready_s = time.monotonic() - started

        # ---- the bus's processes at the primary, under the supervisor
        config = BusConfig(
            subscriber="utumishi",
            sink_secrets={"utumishi_sink_token": TOKEN},
            gateway_clients={"rita": RITA_SECRET},
            log_dir=logs,
        )
        initial = ActiveSite("primary", primary.bootstrap, primary.registry_url, since="")
        supervisor = BusSupervisor(config, state_file, initial, mirror=mirror)
        await asyncio.to_thread(supervisor.start)

        # ---- the stream; the primary is lost once KILL_AT events are acknowledged
        events = [Event(n, str(uuid.uuid4()), n % VIA_GATEWAY == VIA_GATEWAY - 1)
                  for n in range(EVENTS)]  # fmt: skip
        gateway_url = f"http://127.0.0.1:{config.gateway_port}/v1/events"
        stream = Stream(events, gateway_url, (primary.bootstrap, primary.registry_url))
        streaming = asyncio.create_task(stream.run())
        dr_env = {
            "GOVESB_DR__PRIMARY__KAFKA__BOOTSTRAP_SERVERS": primary.bootstrap,
            "GOVESB_DR__PRIMARY__SCHEMA_REGISTRY__URL": primary.registry_url,
            "GOVESB_DR__DR__KAFKA__BOOTSTRAP_SERVERS": dr.bootstrap,
            "GOVESB_DR__DR__SCHEMA_REGISTRY__URL": dr.registry_url,
            "GOVESB_DR__STATE_FILE": str(state_file),
            "GOVESB_DR__TIMEOUT_S": "5",
            # Re-send from 3 s before the newest replicated heartbeat (production: 10 s).
            "GOVESB_DR__RESEND_MARGIN_S": "3",
        }
        await _until(
            lambda: len(stream.acked) >= KILL_AT // 2, 120, "the first events",
            lambda: stream.errors[:3],
        )  # fmt: skip
        code, text, _ = await asyncio.to_thread(_govesb, ["dr", "status", "--json"], dr_env)
        before = json.loads(text)
        await _until(lambda: len(stream.acked) >= KILL_AT, 180, "events before the loss")

        killed_at = time.time()
        primary.kill()
        supervisor.kill()

        # ---- failover, as an operator runs it
        code, text, failover_s = await asyncio.to_thread(
            _govesb, ["dr", "failover", "--json"], dr_env
        )
        failover = json.loads(text)
        assert code == 0, failover["reasons"]
        assert failover["switched"]
        assert not failover["site"]["planned"]
        resend_since = failover["site"]["resend_since"]
        at_dr = await _ids_in(dr.bootstrap, "esb.ingress.rita")
        acked_before_loss = {i for i, at in stream.acked.items() if at <= killed_at}
        gap = acked_before_loss - at_dr  # acknowledged at the primary, never replicated
        since = dt.datetime.fromisoformat(resend_since).timestamp()
        stream.resume(dr.bootstrap, dr.registry_url, since)

        switch = await asyncio.to_thread(supervisor.wait_switch, 2, 180)
        assert switch.error is None, switch.error
        await asyncio.wait_for(streaming, 300)
        acked = set(stream.acked)
        await _until(lambda: endpoint.delivered >= acked, 240, "every acknowledged event")
        await asyncio.sleep(3)  # late duplicates, if any, arrive now

        # ---- what the drill measured
        delivered = endpoint.delivered
        lost = acked - delivered
        first_at_dr = min(at for at, _ in endpoint.arrivals if at >= switch.noticed)
        rto = first_at_dr - killed_at
        duplicates = len(endpoint.arrivals) - len(delivered)
        translated = {g["group"]: g for g in failover["status"]["groups"]}
        groups = ", ".join(
            f"{name} {g['synced']}/{g['checkpointed']} partitions synced"
            for name, g in sorted(translated.items())
        )
        print(
            "\nDR drill\n"
            f"  MirrorMaker 2 replicating in {mirror_ready_s:.1f}s; mid-stream: lag "
            f"{before['total_lag']} record(s), newest heartbeat "
            f"{before['heartbeat_age_s']:.1f}s old, registry: {before['registry']['dr_versions']} "
            f"schema versions, ids "
            f"{'identical' if not before['registry']['different'] else 'DIFFERENT'}\n"
            f"  acknowledged: {len(acked)} ({len(acked_before_loss)} before the primary was "
            f"lost); replication gap at the loss: {len(gap)} acknowledged event(s) not at the "
            f"DR site; re-sent by publishers since {resend_since}: {stream.resent}\n"
            f"  offsets translated at the failover: {groups}\n"
            f"  delivered: {len(delivered)} distinct, {duplicates} duplicate arrival(s) (same "
            f"event id)\n"
            f"  RPO: {len(lost)} acknowledged event(s) lost after catch-up\n"
            f"  RTO: {rto:.1f}s from the loss to the first delivery at the DR site (failover "
            f"command {failover_s:.1f}s, processes restarted in "
            f"{(switch.ready or 0) - switch.noticed:.1f}s)"
        )
        assert not before["registry"]["missing"]
        assert not before["registry"]["different"]
        assert before["heartbeat_age_s"] < 10
        for group in (config.worker_app_id, "govesb-sink-utumishi"):  # resumed, not replayed
            assert translated[group]["synced"] > 0, translated
        assert lost == set(), f"RPO {len(lost)}: acknowledged and never delivered"
        assert delivered == acked, "the endpoint holds ids that were never acknowledged"
        assert {event_id for _, event_id in endpoint.arrivals} <= set(stream.sent)
    finally:
        if streaming is not None and not streaming.done():
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await streaming
        if supervisor is not None:
            await asyncio.to_thread(supervisor.stop)
        if mirror is not None:
            await asyncio.to_thread(mirror.stop)
        await endpoint.stop()
        for site in (primary, dr):
            await asyncio.to_thread(site.stop)
