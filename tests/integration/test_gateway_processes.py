"""``govesb connect gateway --processes 2``: two real gateway processes behind one port.

Every request here goes over a fresh TCP connection (``force_close``), so the kernel spreads
them over both processes (``SO_REUSEPORT``); each process's own ``/health`` and ``/metrics``
(on port + 1 + i) show which served what. A token issued by one is accepted by both; a GovESB
request is answered by the process that holds it; what each process counts alone (tokens per
client, the push replay window) is bounded by N times the single-process figure, as
``connectors/gateway/processes.py`` says; a process killed with SIGKILL is started again while
the port keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.http_sink.delivery import basic_auth
from deploy.kafka.launcher import LauncherError
from deploy.worker import (
    DEMO_GATEWAY_ENV,
    WorkerProcess,
    free_ports,
    start_govesb,
)
from streams.contract import topics
from tests.corpus.malformed import CITIZEN, demo_key, push_data, push_text, signed, structured
from tests.integration.kafka_native import (
    caught_up_worker,
    kafka_native_provider,
    reader_at_end,
    signed_body,
)
from tests.unit.pipeline_fixtures import SAMPLES

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
SECRETS = {name: f"{name}-processes-{uuid.uuid4().hex[:8]}" for name in ("nida", "rita", "brela")}
TOKENS_PER_CLIENT = 5  # per process, per hour (GOVESB_TOKEN_LIMIT_PERIOD_S)
PROCESSES = 2


@dataclass
class Gateways:
    """The command (its shared port) and each process (its own port)."""

    command: WorkerProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.command.web_port}"

    def process(self, index: int) -> WorkerProcess:
        return replace(self.command, web_port=self.command.web_port + 1 + index)


@pytest.fixture(scope="module")
def worker(
    kafka: str, registry: str, applied_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log_path = tmp_path_factory.mktemp("processes-worker") / "worker.log"
    process = caught_up_worker(
        kafka, registry, log_path, "test-gateway-processes", ["tra", "brela"]
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateways(
    kafka: str, registry: str, applied_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    port = free_ports(1 + PROCESSES)
    env = {
        "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
        "GOVESB_SCHEMA_REGISTRY__URL": registry,
        **DEMO_GATEWAY_ENV,
        **{f"GOVESB_CLIENTS__{name.upper()}": s for name, s in SECRETS.items()},
        "GOVESB_RATE_PER_S": "1000",
        "GOVESB_BURST": "1000",
        "GOVESB_TOKENS_PER_CLIENT": str(TOKENS_PER_CLIENT),
        "GOVESB_TOKEN_LIMIT_PERIOD_S": "3600",
    }
    try:
        command = start_govesb(
            ["connect", "gateway", "--web-port", str(port), "--processes", str(PROCESSES)],
            env, tmp_path_factory.mktemp("gateway-processes") / "gateway.log", port,
            lambda body: body["status"] == "ok" and body["checks"]["replies"]["ok"],
        )  # fmt: skip
    except LauncherError as error:
        pytest.fail(str(error))
    started = Gateways(command)
    deadline = time.monotonic() + 90
    while not all(_ready(started.process(i)) for i in range(PROCESSES)):
        assert time.monotonic() < deadline, command.log_path.read_text()[-3000:]
        time.sleep(0.5)
    yield started
    code, _ = command.stop()
    assert code == 0, command.log_path.read_text()[-3000:]


def _ready(process: WorkerProcess) -> bool:
    body = process.health()
    return bool(body and body["status"] == "ok" and body["checks"]["replies"]["ok"])


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a new connection for every request."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        yield http


def _counter(process: WorkerProcess, name: str, **labels: str) -> float:
    text = process.metrics()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def _per_process(gateways: Gateways, name: str, **labels: str) -> list[float]:
    return [_counter(gateways.process(i), name, **labels) for i in range(PROCESSES)]


async def _token(http: aiohttp.ClientSession, url: str, institution: str) -> tuple[int, Any]:
    async with http.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic_auth(institution, SECRETS[institution])},
    ) as response:
        return response.status, await response.json()


async def _post(
    http: aiohttp.ClientSession, url: str, body: str | bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, json.loads(await response.read())


# --------------------------------------------------------------------------- the processes


async def test_each_process_has_its_own_health_and_the_shared_port_answers_for_both(
    gateways: Gateways, fresh: aiohttp.ClientSession
) -> None:
    own = [gateways.process(i).health() for i in range(PROCESSES)]
    assert [body and body["checks"]["process"]["index"] for body in own] == [0, 1]
    assert {body and body["checks"]["process"]["processes"] for body in own} == {PROCESSES}
    pids = {body["checks"]["process"]["pid"] for body in own if body}
    assert len(pids) == PROCESSES
    seen = set()
    for _ in range(40):
        async with fresh.get(f"{gateways.url}/health") as response:
            assert response.status == 200
            seen.add((await response.json())["checks"]["process"]["pid"])
    assert seen == pids
    # The processes' own ports serve /health and /metrics only, never the API.
    async with fresh.post(f"http://127.0.0.1:{gateways.process(0).web_port}/oauth/token") as r:
        assert r.status in (404, 405)


def test_a_second_command_on_the_same_port_is_refused(gateways: Gateways) -> None:
    # SO_REUSEPORT would let it share the port silently, with its own clients and token key.
    started = subprocess.run(
        [str(Path(sys.executable).with_name("govesb")), "connect", "gateway",
         "--web-port", str(gateways.command.web_port), "--processes", str(PROCESSES)],
        env={**os.environ, **DEMO_GATEWAY_ENV, "GOVESB_CLIENTS__NIDA": SECRETS["nida"]},
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 2, started
    assert f"port {gateways.command.web_port} on 127.0.0.1 is in use" in started.stderr.decode()


async def test_a_token_one_process_issued_is_accepted_by_both(
    kafka: str, gateways: Gateways, fresh: aiohttp.ClientSession
) -> None:
    status, issued = await _token(fresh, gateways.url, "nida")
    assert status == 200, issued
    token = issued["access_token"]
    before = _per_process(gateways, "govesb_gateway_requests_total", route="/v1/events",
                          status="202")  # fmt: skip
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents+json"}
    async with reader_at_end(kafka, topics.ingress("nida")) as ingress:
        ids = []
        for _ in range(40):
            status, body = await _post(
                fresh, f"{gateways.url}/v1/events", json.dumps(structured()), headers
            )
            assert status == 202, body
            ids.append(body["id"])
        on_the_bus: set[str] = set()
        async with asyncio.timeout(30):
            while not set(ids) <= on_the_bus:
                for records in (await ingress.getmany(timeout_ms=500)).values():
                    on_the_bus.update(dict(r.headers).get("ce_id", b"").decode() for r in records)
    after = _per_process(gateways, "govesb_gateway_requests_total", route="/v1/events",
                         status="202")  # fmt: skip
    accepted = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(accepted) == 40
    assert all(count > 0 for count in accepted), accepted  # both processes took some
    # The GovESB way too: the raw token without "Bearer", on a push, in both processes.
    pushed = _per_process(gateways, "govesb_gateway_requests_total",
                          route="/engine/esb/push-request", status="202")  # fmt: skip
    for _ in range(20):
        text = json.dumps(push_data(CITIZEN), separators=(",", ":"))
        status, body = await _post(
            fresh, f"{gateways.url}/engine/esb/push-request", push_text(text, signed(text)),
            {"Authorization": token, "Content-Type": "application/json"},
        )  # fmt: skip
        assert status == 202, body
    now = _per_process(gateways, "govesb_gateway_requests_total",
                       route="/engine/esb/push-request", status="202")  # fmt: skip
    assert all(n > p for n, p in zip(now, pushed, strict=True)), (pushed, now)
    # Neither the token nor a client secret is in any process's log, /metrics or /health.
    pages = [gateways.command.log_path.read_text()]
    for index in range(PROCESSES):
        pages += [gateways.process(index).metrics(), json.dumps(gateways.process(index).health())]
    for secret in (token, *SECRETS.values()):
        assert not any(secret in page for page in pages)


async def test_tokens_per_client_are_counted_per_process_so_at_most_n_times_the_limit(
    gateways: Gateways, fresh: aiohttp.ClientSession
) -> None:
    live_before = sum(_per_process(gateways, "govesb_gateway_live_tokens"))
    answers = [await _token(fresh, gateways.url, "rita") for _ in range(60)]
    statuses = Counter(status for status, _ in answers)
    assert statuses == {200: PROCESSES * TOKENS_PER_CLIENT, 429: 60 - PROCESSES * TOKENS_PER_CLIENT}
    # Each process counts the tokens it issued: their sum is the gateway's.
    live_after = sum(_per_process(gateways, "govesb_gateway_live_tokens"))
    assert live_after - live_before == PROCESSES * TOKENS_PER_CLIENT


async def test_a_replayed_push_is_accepted_at_most_once_per_process_with_one_event_id(
    kafka: str, gateways: Gateways, fresh: aiohttp.ClientSession
) -> None:
    status, issued = await _token(fresh, gateways.url, "nida")
    assert status == 200, issued
    text = json.dumps(push_data(CITIZEN), separators=(",", ":"))
    body = push_text(text, signed(text))
    headers = {"Authorization": f"Bearer {issued['access_token']}",
               "Content-Type": "application/json"}  # fmt: skip
    async with reader_at_end(kafka, topics.ingress("nida")) as ingress:
        answers = [
            await _post(fresh, f"{gateways.url}/engine/esb/push-request", body, headers)
            for _ in range(30)
        ]
        statuses = Counter(status for status, _ in answers)
        accepted = {a["data"]["esbBody"]["eventId"] for s, a in answers if s == 202}
        assert 1 <= statuses[202] <= PROCESSES, statuses
        assert statuses[409] == 30 - statuses[202]
        assert {a["error"] for s, a in answers if s == 409} == {"replayed"}
        # One event id however many processes took it: the pipeline's duplicate window
        # (keyed on ce_id) refuses all but the first as `duplicate`.
        assert len(accepted) == 1
        copies = 0
        async with asyncio.timeout(30):
            while copies < statuses[202]:
                for records in (await ingress.getmany(timeout_ms=500)).values():
                    copies += sum(
                        dict(r.headers).get("ce_id") == next(iter(accepted)).encode()
                        for r in records
                    )
        assert copies == statuses[202]


async def test_requests_are_answered_by_the_process_that_holds_them(
    kafka: str, registry: str, worker: WorkerProcess, gateways: Gateways,
    fresh: aiohttp.ClientSession,
) -> None:  # fmt: skip
    status, issued = await _token(fresh, gateways.url, "brela")
    assert status == 200, issued
    tins = [f"{200_000_000 + n}" for n in range(24)]

    async def call(tin: str) -> dict[str, Any]:
        status, reply = await _post(
            fresh, f"{gateways.url}/engine/esb/request",
            signed_body(demo_key("brela"), {"apiCode": "TIN_STATUS", "esbBody": {"tin": tin}}),
            {"Authorization": f"Bearer {issued['access_token']}",
             "Content-Type": "application/json"},
        )  # fmt: skip
        assert status == 200, reply
        return dict(reply["data"])

    def tra_answers(request: dict[str, Any]) -> Any:
        return {**SAMPLES["TIN_STATUS.response"], "tin": request["tin"]}

    async with kafka_native_provider(kafka, registry, "tra", tra_answers):
        # A worker just started takes a few seconds over its first request and answer (more
        # than TIN_STATUS's 5 s deadline on a busy machine): one answered call first.
        async with asyncio.timeout(60):
            while "esbBody" not in await call("199999999"):
                pass
        before = _per_process(gateways, "govesb_gateway_api_requests_total", api="TIN_STATUS",
                              outcome="answered")  # fmt: skip
        datas = await asyncio.gather(*(call(tin) for tin in tins))
    assert [d.get("esbBody", d) for d in datas] == [
        {"tin": tin, "registered": True, "compliant": True} for tin in tins
    ]
    after = _per_process(gateways, "govesb_gateway_api_requests_total", api="TIN_STATUS",
                         outcome="answered")  # fmt: skip
    answered = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(answered) == len(tins)
    assert all(count > 0 for count in answered), answered
    assert _per_process(gateways, "govesb_gateway_held_calls") == [0.0] * PROCESSES


async def test_a_killed_process_is_started_again_and_the_port_keeps_answering(
    gateways: Gateways, fresh: aiohttp.ClientSession
) -> None:
    victim = gateways.process(0)
    health = victim.health()
    assert health is not None
    pid, restarts = health["checks"]["process"]["pid"], health["checks"]["process"]["restarts"]
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(10):  # its sockets close as it dies
        while await asyncio.to_thread(_answers, victim.web_port):  # noqa: ASYNC110 - a port
            await asyncio.sleep(0.1)
    answered = 0
    async with asyncio.timeout(60):  # restarted after a backoff of 1 s, then starts up
        while True:
            async with fresh.get(f"{gateways.url}/health") as response:
                assert response.status == 200  # the other process answers meanwhile
                answered += 1
            again = await asyncio.to_thread(victim.health)
            if again and again["status"] == "ok" and again["checks"]["replies"]["ok"]:
                break
            await asyncio.sleep(0.2)
    assert answered > 1
    process = again["checks"]["process"]
    assert (process["index"], process["restarts"]) == (0, restarts + 1)
    assert process["pid"] != pid
    seen = set()
    for _ in range(40):
        async with fresh.get(f"{gateways.url}/health") as response:
            seen.add((await response.json())["checks"]["process"]["pid"])
    assert process["pid"] in seen


def _answers(port: int) -> bool:
    """Whether anything listens on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False
