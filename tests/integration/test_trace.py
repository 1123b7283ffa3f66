"""``govesb trace`` and ``govesb track`` against the real bus: a real worker, the real HTTP sink
and a real aiohttp endpoint; the index is a real SQLite file read back as a user would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from connectors.cli import app
from deploy.kafka.launcher import die_with_parent, free_port
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID
from streams.audit.chain import SUBJECT_KEY_PURPOSE, subject_digest
from streams.contract.signing import load_private_key
from streams.settings import REPO_ROOT
from tests.integration.test_http_sink import _publish_deaths
from tests.integration.test_pipeline import _publisher
from tests.unit.pipeline_fixtures import CATALOG, sample

# Its own system: its events must not pass for another module's (test_http_sink's endpoint
# counts the events of its own source).
SYSTEM = f"crvs-trace-{uuid.uuid4().hex[:8]}"
SOURCE = f"/institutions/rita/systems/{SYSTEM}"

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
CITIZEN = "tz.go.nida.CitizenRegistered"
SUBJECT_KEY = load_private_key(DEMO_BUS_KEY.read_text()).derive_key(SUBJECT_KEY_PURPOSE)


class FirstTimeUnavailable:
    """A legacy endpoint answering 503 to the first request of each of this run's events,
    then 200 (other tests' events on the shared delivery topics get 200 at once)."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.received: list[str] = []
        self.first_answer = 503  # 422: the first request of each event is refused for good

    async def handle(self, request: web.Request) -> web.Response:
        event_id = request.headers.get("ce-id", "")
        await request.read()
        if request.headers.get("ce-source") == SOURCE and event_id not in self.refused:
            self.refused.add(event_id)
            return web.Response(status=self.first_answer, text="not now")
        self.received.append(event_id)
        return web.json_response({"ok": True})


@pytest.fixture
async def endpoint() -> Any:
    legacy = FirstTimeUnavailable()
    application = web.Application()
    application.router.add_post("/esb/deaths", legacy.handle)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    legacy.url = f"http://127.0.0.1:{port}/esb/deaths"  # type: ignore[attr-defined]
    yield legacy
    await runner.cleanup()


@pytest.fixture
async def subscriber(kafka: str, registry: str, endpoint, start_worker, tmp_path: Path) -> Any:
    """An institution of this test's own with an HTTP agreement for deaths, a worker, and
    ``govesb connect http-sink`` for it (its consumer group is this test's alone: the shared
    bus may run other tests' sinks for the example's subscribers)."""
    name = f"trace-{uuid.uuid4().hex[:8]}"
    document = yaml.safe_load((REPO_ROOT / "deploy/registry.example.yaml").read_text())
    document["catalog"] = str(REPO_ROOT / "schemas/catalog.yaml")
    document["institutions"].append(
        {"id": name, "name": "Trace test", "systems": ["hcmis"],
         "endpoint": {"url": endpoint.url, "timeout_s": 5}}
    )  # fmt: skip
    document["subscriptions"].append(
        {"id": f"{name}-deaths", "subscriber": name, "purpose": "Trace test deliveries.",
         "event_types": ["tz.go.rita.DeathRegistered"], "delivery": "http",
         "fields": ["entryNumber", "deceasedNin", "dateOfDeath"]}
    )  # fmt: skip
    edited = tmp_path / "registry.yaml"
    edited.write_text(yaml.safe_dump(document))
    runner = CliRunner()

    async def apply() -> None:
        applied = await asyncio.to_thread(
            runner.invoke, app, ["--bootstrap", kafka, "--schema-registry", registry,
                                 "registry", "apply", str(edited)]
        )  # fmt: skip
        assert applied.exit_code == 0, applied.output

    await apply()
    start_worker()
    env = {
        **os.environ,
        "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
        "GOVESB_SCHEMA_REGISTRY__URL": registry,
        "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
        "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID,
        "GOVESB_BACKOFF_INITIAL_S": "0.05",
    }
    process = await _start_sink(name, env, tmp_path / "sink.log", apply)
    yield name, apply
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _start_sink(name: str, env: dict[str, str], log_path: Path, apply: Any) -> Any:
    """``govesb connect http-sink --subscriber name``, once it has its partitions. On a shared
    bus another test's ``registry apply`` may remove the institution just before the sink reads
    the registry (it then exits: no endpoint): apply again and restart it, a few times."""
    for _ in range(3):
        port = free_port()
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("govesb")), "connect", "http-sink",
                "--subscriber", name, "--web-port", str(port),
                env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while process.returncode is None and time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as response:
                        body = await response.json()
                        if body["checks"]["consumer"]["partitions"] > 0:
                            return process
                except (aiohttp.ClientError, KeyError, ValueError):
                    pass
                await asyncio.sleep(0.2)
        log = _text(log_path)
        if process.returncode is None:
            raise AssertionError(f"the sink did not get its partitions: {log}")
        if "has no HTTP endpoint" not in log:
            raise AssertionError(f"the sink exited: {log}")
        await apply()
    raise AssertionError(f"the sink never found its endpoint: {_text(log_path)}")


def _text(path: Path) -> str:
    return path.read_text()


@pytest.fixture
def cli(kafka: str, tmp_path: Path) -> Any:
    """``govesb …`` in this process, with the index in this test's own SQLite file."""
    runner = CliRunner()
    env = {
        "GOVESB_TRACE__DATABASE": str(tmp_path / "trace.sqlite"),
        "GOVESB_TRACE__SUBJECT_KEY": SUBJECT_KEY.hex(),
    }

    async def invoke(*args: str) -> Any:
        return await asyncio.to_thread(
            runner.invoke, app, ["--bootstrap", kafka, *args], env=env, catch_exceptions=False
        )

    invoke.database = tmp_path / "trace.sqlite"  # type: ignore[attr-defined]
    return invoke


async def _trace_until(
    cli: Any, event_id: str, step: str, seconds: float = 60, detail: bool = False
) -> dict[str, Any]:
    """``govesb trace ID --json`` until the timeline has ``step`` (the sink audits per batch;
    ``detail``: a step with a detail, which other tests' workers of older code do not write)."""
    deadline = time.monotonic() + seconds
    while True:
        result = await cli("trace", event_id, "--json")
        if result.exit_code == 0:
            found = json.loads(result.stdout)
            if any(s["what"] == step and (s["detail"] or not detail) for s in found["steps"]):
                return found
        assert time.monotonic() < deadline, f"no {step!r} step for {event_id}: {result.output}"
        await asyncio.sleep(0.5)


async def test_a_delivered_event_is_traced_through_worker_agreements_and_http_attempts(
    kafka: str, registry: str, endpoint, subscriber, cli
) -> None:
    name, apply = subscriber
    for _ in range(3):  # another test's `registry apply` on the shared bus may drop our agreement
        [(event_id, _)] = await _publish_deaths(kafka, registry, 1, keys=1, system=SYSTEM)
        found = await _trace_until(cli, event_id, "routed")
        if (name, f"{name}-deaths") in {
            (d["subscriber"], d["agreement"]) for d in found["deliveries"]
        }:
            break
        await apply()
    found = await _trace_until(cli, event_id, "delivered")

    assert found["accepted"] is True
    assert found["event_type"] == "tz.go.rita.DeathRegistered"
    assert found["publisher"] == "rita"
    assert found["received_at"].startswith("20")
    assert {(d["subscriber"], d["agreement"], d["topic"]) for d in found["deliveries"]} >= {
        (name, f"{name}-deaths", f"esb.deliver.{name}")
    }
    steps = [(s["what"], s["subscriber"], s["status"], s["attempt"]) for s in found["steps"]]
    assert steps[:2] == [("received", None, None, None), ("accepted", None, None, None)]
    assert ("routed", name, None, None) in steps
    sink = [step for step in steps if step[0] in ("attempt", "delivered")]
    assert sink[:2] == [("attempt", name, 503, 1), ("delivered", name, 200, 2)]
    times = [s["time"] for s in found["steps"]]
    assert times == sorted(times)
    assert found["received_at"] < next(s["time"] for s in found["steps"] if s["what"] == "attempt")

    readable = await cli("trace", event_id)
    assert readable.exit_code == 0, readable.output
    assert "accepted" in readable.stdout
    assert f"{name}-deaths" in readable.stdout
    assert "503" in readable.stdout

    # The index deleted and rebuilt from esb.audit: the same trace.
    # The index deleted: the next trace reads esb.audit again from the beginning, and so does
    # `index rebuild`; the same trace (other tests' workers may have added records since).
    for suffix in ("", "-wal", "-shm"):
        await asyncio.to_thread(Path(f"{cli.database}{suffix}").unlink, missing_ok=True)
    for command in (("trace", event_id, "--json"), ("index", "rebuild")):
        result = await cli(*command)
        assert result.exit_code == 0, result.output
        again = json.loads((await cli("trace", event_id, "--json")).stdout)
        assert again["steps"][: len(found["steps"])] == found["steps"]
        assert {k: v for k, v in again.items() if k != "steps"} == {
            k: v for k, v in found.items() if k != "steps"
        }


async def _publish_routed(kafka: str, registry: str, cli: Any, subscriber: Any) -> str:
    """A death published and routed under the test's own agreement; its event id."""
    name, apply = subscriber
    for _ in range(3):  # another test's `registry apply` on the shared bus may drop our agreement
        [(event_id, _)] = await _publish_deaths(kafka, registry, 1, keys=1, system=SYSTEM)
        found = await _trace_until(cli, event_id, "routed")
        if (name, f"{name}-deaths") in {
            (d["subscriber"], d["agreement"]) for d in found["deliveries"]
        }:
            return event_id
        await apply()
    raise AssertionError(f"{name}-deaths never routed: {found}")


async def test_a_dead_letter_and_its_replay_are_in_the_trace(
    kafka: str, registry: str, endpoint, subscriber, cli
) -> None:
    endpoint.first_answer = 422
    name, _ = subscriber
    event_id = await _publish_routed(kafka, registry, cli, subscriber)
    found = await _trace_until(cli, event_id, "dead-lettered")
    dead = next(s for s in found["steps"] if s["what"] == "dead-lettered")
    assert (dead["subscriber"], dead["status"], dead["attempt"]) == (name, 422, 1)
    assert dead["detail"] == f"esb.dlq.{name}"

    replayed = await cli("dlq", "replay", "--subscriber", name, "--ids", event_id)
    assert "replayed 1 dead letter(s)" in replayed.output, replayed.output
    found = await _trace_until(cli, event_id, "delivered")
    sink = [(s["what"], s["status"]) for s in found["steps"]
            if s["what"] in ("dead-lettered", "replayed", "delivered")]  # fmt: skip
    assert sink[:3] == [("dead-lettered", 422), ("replayed", None), ("delivered", 200)]
    replay = next(s for s in found["steps"] if s["what"] == "replayed")
    assert replay["detail"].startswith(f"from esb.dlq.{name}[")


async def test_a_rejected_event_shows_its_reason_and_detail(
    kafka: str, registry: str, start_worker, cli
) -> None:
    start_worker()
    async with _publisher(kafka, registry, "nida") as nida:
        entry = CATALOG.get(CITIZEN)
        assert entry is not None
        good = nida.prepare(entry, await nida._schemas.id_for(entry), sample(CITIZEN))
    tampered = bytearray(good.value)
    tampered[-2] ^= 0x01
    event_id = dict(good.headers)["ce_id"].decode()
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(
            "esb.ingress.nida", bytes(tampered), key=good.key, headers=list(good.headers)
        )
    finally:
        await producer.stop()
    found = await _trace_until(cli, event_id, "rejected", detail=True)
    assert (found["accepted"], found["reason"]) == (False, "bad-signature")
    assert found["detail"].startswith("signature does not verify with nida-")
    assert found["deliveries"] == []
    readable = await cli("trace", event_id)
    assert "rejected" in readable.stdout
    assert "bad-signature" in readable.stdout
    missing = await cli("trace", str(uuid.uuid4()))
    assert missing.exit_code == 1


async def test_the_data_tracker_answers_operators_and_the_owner_and_refuses_others(
    kafka: str, registry: str, start_worker, cli
) -> None:
    start_worker()
    nin = f"1990{uuid.uuid4().int % 10**16:016d}"
    async with _publisher(kafka, registry, "nida") as nida:
        event_id = await nida.publish(CITIZEN, sample(CITIZEN, nin=nin))
    await _trace_until(cli, event_id, "routed")

    key = await cli("index", "subject-key", "--key-file", str(DEMO_BUS_KEY))
    assert key.stdout.strip() == SUBJECT_KEY.hex()

    operator = await cli("track", nin, "--operator", "alice", "--json")
    assert operator.exit_code == 0, operator.output
    answer = json.loads(operator.stdout)
    assert answer["asker"] == "operator:alice"
    disclosures = {d["agreement"]: d for d in answer["disclosures"]}
    identity = disclosures["tra-citizen-identity"]
    assert identity["event_id"] == event_id
    assert (identity["subscriber"], identity["owner"]) == ("tra", "nida")
    assert identity["fields"] == ["nin", "firstName", "middleName", "lastName", "dateOfBirth",
                                  "region", "district", "phoneNumber"]  # fmt: skip
    assert identity["masked"] == ["phoneNumber"]
    assert identity["purpose"].startswith("Match taxpayers to verified identities")

    owner = await cli("track", nin, "--institution", "nida", "--json")
    assert owner.exit_code == 0, owner.output
    assert json.loads(owner.stdout)["disclosures"] == answer["disclosures"]
    readable = await cli("track", nin, "--institution", "nida")
    assert "tra-citizen-identity" in readable.stdout
    refused = await cli("track", nin, "--institution", "brela")
    assert refused.exit_code == 1
    assert "may not see" in refused.stderr
    assert nin not in refused.output

    await cli("trace", event_id)  # one more catch-up: the lookups' own audit records
    database = sqlite3.connect(cli.database)
    stored = {row[0] for row in database.execute("SELECT subject FROM audit_record")}
    lookups = database.execute(
        "SELECT publisher, reason FROM audit_record WHERE outcome = 'lookup' AND subject = ? "
        "ORDER BY time",
        (subject_digest(SUBJECT_KEY, nin),),
    ).fetchall()
    database.close()
    assert subject_digest(SUBJECT_KEY, nin) in stored
    assert nin not in stored
    assert nin.encode() not in await asyncio.to_thread(Path(cli.database).read_bytes)
    # (Other tests' workers on the shared bus may route the event again between lookups.)
    assert [(asker, reason.split()[0]) for asker, reason in lookups] == [
        ("operator:alice", "allowed"),
        ("institution:nida", "allowed"),
        ("institution:nida", "allowed"),
        ("institution:brela", "refused"),
    ]
    assert lookups[0][1] == f"allowed found={len(answer['disclosures'])}"


async def test_index_follow_keeps_the_index_up_to_date_until_sigterm(
    kafka: str, registry: str, start_worker, tmp_path: Path
) -> None:
    start_worker()
    database = tmp_path / "followed.sqlite"
    env = {**os.environ, "GOVESB_TRACE__DATABASE": str(database)}
    with (tmp_path / "follow.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("govesb")), "--bootstrap", kafka, "index", "follow",
            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )  # fmt: skip
    try:
        async with _publisher(kafka, registry, "nida") as nida:
            event_id = await nida.publish(CITIZEN, sample(CITIZEN))

        def routed() -> bool:
            if not database.exists():
                return False
            with contextlib.closing(sqlite3.connect(database, timeout=30)) as db:
                try:
                    query = "SELECT count(*) FROM audit_record WHERE event_id = ? AND outcome = ?"
                    return bool(db.execute(query, (event_id, "routed")).fetchone()[0])
                except sqlite3.OperationalError:  # the follower has not created its tables yet
                    return False

        deadline = time.monotonic() + 90
        while not await asyncio.to_thread(routed):
            assert process.returncode is None, (tmp_path / "follow.log").read_text()
            assert time.monotonic() < deadline, "the follower did not index the event"
            await asyncio.sleep(0.5)
    finally:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0, (tmp_path / "follow.log").read_text()
