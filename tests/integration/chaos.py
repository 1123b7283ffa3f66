"""What the chaos tests share: a legacy endpoint that misbehaves on demand, the processes of
the bus (worker, HTTP sink, gateway) as an operator starts them, a steady publisher, and the
accounting every chaos test ends with (sent, delivered, duplicates, rejected, lost).

The endpoint is a small HTTP/1.1 server on a raw socket, not aiohttp: only that way can it
answer with bytes that are not HTTP, cut a response short or reset the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from typer.testing import CliRunner

from connectors.cli import app
from connectors.http_sink.delivery import basic_auth
from deploy.kafka.launcher import LauncherError, LocalBus, free_port
from deploy.worker import (
    DEMO_BUS_KEY,
    DEMO_BUS_KEY_ID,
    DEMO_GATEWAY_ENV,
    WorkerProcess,
    start_govesb,
    start_worker,
)
from streams.client.consuming import assign_topics
from streams.client.publisher import Publisher
from streams.contract import topics
from streams.contract.signing import load_private_key
from streams.registry.view import RegistryView
from streams.settings import REPO_ROOT, KafkaSettings, SchemaRegistrySettings
from tests.unit.pipeline_fixtures import CATALOG, KEY_IDS, SAMPLES, sample

DEATH = "tz.go.rita.DeathRegistered"
BIRTH = "tz.go.rita.BirthRegistered"
ENDPOINT_TOKEN = "chaos-endpoint-token-51d0"  # noqa: S105 - the test endpoint's bearer token
GATEWAY_SECRET = "chaos-rita-client-secret-77a2"  # noqa: S105 - the gateway test client's secret
EXAMPLE_REGISTRY = REPO_ROOT / "deploy" / "registry.example.yaml"


def new_system() -> str:
    """A system name of this test's own: its events are told apart on shared topics by it."""
    return f"chaos-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- the endpoint


@dataclass(frozen=True)
class Answer:
    """What the endpoint does with one request.

    ``kind``: ``http`` (``status`` with ``body``), ``reset`` (TCP reset, no answer),
    ``not-http`` (bytes that are no HTTP response), ``truncated`` (a 200 whose body is cut short:
    the endpoint did the work, the sink cannot know).
    """

    kind: str = "http"
    status: int = 200
    body: bytes = b'{"ok":true}'
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0

    @property
    def processed(self) -> bool:
        """Whether the endpoint did the work (its application answered 2xx)."""
        return (self.kind == "http" and 200 <= self.status < 300) or self.kind == "truncated"


OK = Answer()


@dataclass(frozen=True)
class Arrival:
    """One request of this test's events that reached the endpoint."""

    event_id: str
    key: str
    body: bytes
    at: float
    answer: Answer
    agreement: str = ""


@dataclass
class LegacyEndpoint:
    """A legacy system's HTTP endpoint (CloudEvents binary mode, bearer token).

    ``behaviour(event_id, attempt, data)`` decides the answer to this test's events
    (``attempt`` counts from 1 per event id, ``data`` is the JSON body); events of other
    sources (other tests on a shared bus) are answered 200 at once and only counted.
    ``down()`` closes the listening socket and every connection (clients get "connection
    refused"); ``up()`` listens again on the same port.
    """

    source: str
    behaviour: Callable[[str, int, dict[str, Any]], Answer] = field(
        default=lambda _id, _attempt, _data: OK
    )
    port: int = field(default_factory=free_port)
    arrivals: list[Arrival] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)
    others: int = 0
    hanging: bool = False  # every request is read and never answered (a black hole)
    hung: int = 0
    most_hanging_at_once: int = 0
    _hanging_now: int = 0
    _attempts: Counter[str] = field(default_factory=Counter)
    _server: asyncio.Server | None = None
    _connections: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/esb/deaths"

    async def up(self) -> None:
        """Listen (again) on the endpoint's port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()
        if self._handlers:  # let every connection's handler see its connection gone
            await asyncio.wait(list(self._handlers), timeout=5)

    def processed(self) -> list[Arrival]:
        """Requests the endpoint's application answered 2xx to (duplicates included)."""
        return [a for a in self.arrivals if a.answer.processed]

    def delivered(self) -> set[str]:
        """Event ids processed at least once: what the endpoint holds after de-duplication."""
        return {a.event_id for a in self.processed()}

    def deliveries(self, agreement: str | None = None) -> set[tuple[str, str]]:
        """(event id, agreement) pairs processed at least once (of one agreement, if given)."""
        return {
            (a.event_id, a.agreement)
            for a in self.processed()
            if agreement is None or a.agreement == agreement
        }

    def duplicates(self) -> int:
        """Requests processed again for an event and agreement already processed."""
        return len(self.processed()) - len(self.deliveries())

    def first_processed_by_key(self) -> dict[str, list[str]]:
        """Per business key, event ids in the order the endpoint first processed them."""
        order: dict[str, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for arrival in self.processed():
            if arrival.event_id not in seen:
                seen.add(arrival.event_id)
                order[arrival.key].append(arrival.event_id)
        return order

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.hanging:
                    await self._hang(reader)
                    return
                if not await self._answer(headers, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            return
        finally:
            self._connections.discard(writer)
            writer.transport.abort()

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        """Never answer; return when the client gives up (closes the connection)."""
        self.hung += 1
        self._hanging_now += 1
        self.most_hanging_at_once = max(self.most_hanging_at_once, self._hanging_now)
        try:
            while await reader.read(1024):
                pass
        finally:
            self._hanging_now -= 1

    async def _answer(
        self, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is to be dropped."""
        if headers.get("authorization") != f"Bearer {ENDPOINT_TOKEN}":
            answer = Answer(status=401, body=b"no or wrong token")
        elif headers.get("ce-source") != self.source:
            self.others += 1
            answer = OK
        else:
            event_id = headers.get("ce-id", "")
            self._attempts[event_id] += 1
            data = json.loads(body) if body else {}
            answer = self.behaviour(event_id, self._attempts[event_id], data)
            key = str(data.get("entryNumber", ""))
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            agreement = headers.get("ce-esbsubscription", "")
            self.arrivals.append(Arrival(event_id, key, body, time.monotonic(), answer, agreement))
            self.answered[answer.kind if answer.kind != "http" else str(answer.status)] += 1
        if answer.kind == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if answer.kind == "not-http":
            writer.write(b"\x00\x17garbage <html>not an HTTP response\r\n\r\n")
            await writer.drain()
            return False
        if answer.kind == "truncated":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 400\r\n\r\n{\"ok\":tr")  # fmt: skip
            await writer.drain()
            return False
        reason = "OK" if answer.status < 300 else "Error"
        head = [f"HTTP/1.1 {answer.status} {reason}", f"Content-Type: {answer.content_type}",
                f"Content-Length: {len(answer.body)}", "Connection: keep-alive",
                *(f"{k}: {v}" for k, v in answer.headers)]  # fmt: skip
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + answer.body)
        await writer.drain()
        return True


# --------------------------------------------------------------------------- the registry


def cli(bootstrap: str, registry_url: str, *args: str) -> str:
    """Run ``govesb <args>`` against this bus in-process; its output, or fail the test."""
    result = CliRunner().invoke(app, ["--bootstrap", bootstrap, "--schema-registry",
                                      registry_url, *args])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


def registry_document(
    endpoint_url: str | None,
    extra_subscriptions: Iterable[dict[str, Any]] = (),
    timeout_s: float = 5,
) -> dict[str, Any]:
    """The example registry with utumishi's endpoint at ``endpoint_url`` (CloudEvents, bearer;
    None: as in the example) and more agreements."""
    document = yaml.safe_load(EXAMPLE_REGISTRY.read_text())
    document["catalog"] = str(REPO_ROOT / "schemas" / "catalog.yaml")
    document["subscriptions"].extend(extra_subscriptions)
    if endpoint_url is None:
        return document
    utumishi = next(i for i in document["institutions"] if i["id"] == "utumishi")
    utumishi["endpoint"] = {
        "url": endpoint_url,
        "format": "cloudevents",
        "timeout_s": timeout_s,
        "auth": {"type": "bearer", "secret_ref": "utumishi_sink_token"},
    }
    return document


async def apply_registry(bootstrap: str, registry_url: str, document: dict[str, Any],
                         tmp_path: Path) -> None:  # fmt: skip
    """``govesb registry apply`` of ``document``."""
    path = tmp_path / f"registry-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    await asyncio.to_thread(cli, bootstrap, registry_url, "registry", "apply", str(path))


async def repin(kafka: str, subscription: str, version: int) -> None:
    """Rewrite ``subscription/<id>`` on esb.registry with another pinned schema version, as an
    older tool or a hand-written record would (``registry apply`` refuses a version the schema
    registry lacks)."""
    view = RegistryView(KafkaSettings(bootstrap_servers=kafka))
    await view.start(follow=False)
    await view.stop()
    record = json.loads(view.raw[f"subscription/{subscription}"])
    record["schema_version"] = version
    producer = AIOKafkaProducer(**KafkaSettings(bootstrap_servers=kafka).durable_producer_options())
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.REGISTRY,
            json.dumps(record).encode(),
            key=f"subscription/{subscription}".encode(),
        )
    finally:
        await producer.stop()


async def restore_registry(bootstrap: str, registry_url: str) -> None:
    """The example registry again, as other tests expect it."""
    await asyncio.to_thread(
        cli, bootstrap, registry_url, "registry", "apply", str(EXAMPLE_REGISTRY)
    )


# --------------------------------------------------------------------------- processes


def own_bus(data_dir: Path, ci: bool) -> Iterator[LocalBus]:
    """A broker and registry of the test module's own, keeping their data (and ports) in
    ``data_dir`` across a stop and start; the catalogue's schemas registered."""
    bus = LocalBus(data_dir=data_dir)
    try:
        bus.start()
    except LauncherError as error:
        message = f"the chaos test's own broker/registry could not start: {error}"
        if ci:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    try:
        cli(bus.bootstrap, bus.registry_url, "schemas", "register")
        yield bus
    finally:
        bus.stop()


def worker_process(
    bootstrap: str, registry_url: str, log_path: Path, app_id: str | None = None, **settings: str
) -> WorkerProcess:
    """``govesb worker`` (commits every 0.5 s unless told otherwise); ready once it holds
    partitions."""
    env = {"GOVESB_COMMIT_INTERVAL_S": "0.5",
           **{f"GOVESB_{name.upper()}": value for name, value in settings.items()}}  # fmt: skip
    try:
        return start_worker(bootstrap, registry_url, log_path,
                            app_id=app_id or f"chaos-{uuid.uuid4().hex[:8]}",
                            extra_env=env, ready_timeout=180)  # fmt: skip
    except LauncherError as error:
        pytest.fail(str(error))


def bus_env(bootstrap: str, registry_url: str) -> dict[str, str]:
    """Environment every GovESB process of a test gets."""
    return {
        "GOVESB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "GOVESB_SCHEMA_REGISTRY__URL": registry_url,
        "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
        "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID,
    }


def start_sink(bootstrap: str, registry_url: str, log_path: Path, **settings: str) -> WorkerProcess:
    """``govesb connect http-sink --subscriber utumishi``; ready once it holds partitions.

    ``settings``: more ``GOVESB_*`` variables, by their name without the prefix.
    """
    port = free_port()
    env = {
        **bus_env(bootstrap, registry_url),
        "GOVESB_SECRETS__UTUMISHI_SINK_TOKEN": ENDPOINT_TOKEN,
        **{f"GOVESB_{name.upper()}": value for name, value in settings.items()},
    }
    try:
        return start_govesb(
            ["connect", "http-sink", "--subscriber", "utumishi", "--web-port", str(port)],
            env,
            log_path,
            port,
            lambda body: body["checks"]["consumer"]["partitions"] > 0,
            ready_timeout=120,
        )
    except LauncherError as error:
        pytest.fail(str(error))


def start_gateway(
    bootstrap: str, registry_url: str, log_path: Path, **settings: str
) -> WorkerProcess:
    """``govesb connect gateway`` with rita as a client; ready once /health says ok."""
    port = free_port()
    env = {
        **bus_env(bootstrap, registry_url),
        **DEMO_GATEWAY_ENV,
        "GOVESB_CLIENTS__RITA": GATEWAY_SECRET,
        **{f"GOVESB_{name.upper()}": value for name, value in settings.items()},
    }
    try:
        return start_govesb(
            ["connect", "gateway", "--web-port", str(port)],
            env,
            log_path,
            port,
            lambda body: body["status"] == "ok",
            ready_timeout=120,
        )
    except LauncherError as error:
        pytest.fail(str(error))


def breaker_state(metrics_text: str) -> int | None:
    """``govesb_sink_breaker_state`` in a /metrics text (0 closed, 1 half-open, 2 open)."""
    found = re.search(r"^govesb_sink_breaker_state\{[^}]*\} ([0-9.]+)$", metrics_text, re.M)
    return int(float(found.group(1))) if found else None


# --------------------------------------------------------------------------- publishing


def rita_publisher(bootstrap: str, registry_url: str, system: str) -> Publisher:
    """RITA's publisher SDK, as a RITA system uses it."""
    return Publisher.connect(
        institution="rita",
        system=system,
        key_id=KEY_IDS["rita"],
        key=load_private_key((REPO_ROOT / "deploy/demo-keys/rita.key.pem").read_text()),
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        schema_registry=SchemaRegistrySettings(url=registry_url),
        catalog=CATALOG,
    )


def death(entry: str, n: int, **changes: Any) -> dict[str, Any]:
    """A death RITA registers: routed to nida (Kafka) and utumishi (HTTP) alike."""
    return sample(DEATH, **{"entryNumber": entry, "firstName": f"Seq{n}", **changes})


@dataclass
class Stream:
    """Events published at a steady rate; a publish that fails is retried with the same id.

    ``published`` holds (event id, key) in publish order, each once, after its ack.
    """

    publisher: Publisher
    keys: int
    prefix: str
    payload: Callable[[str, int], dict[str, Any]] = death
    published: list[tuple[str, str]] = field(default_factory=list)
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    longest_publish_s: float = 0.0

    def key(self, n: int) -> str:
        return f"{self.prefix}{n % self.keys:04d}"

    async def publish(self, n: int, payload: dict[str, Any] | None = None,
                      event_type: str = DEATH) -> str:  # fmt: skip
        event_id = str(uuid.uuid4())
        key = self.key(n)
        started = time.monotonic()
        while True:
            try:
                await self.publisher.publish(
                    event_type, payload or self.payload(key, n), event_id=event_id
                )
                break
            except (KafkaError, TimeoutError) as error:
                self.retries += 1
                self.errors[type(error).__name__] += 1
                await asyncio.sleep(0.5)
        self.longest_publish_s = max(self.longest_publish_s, time.monotonic() - started)
        self.published.append((event_id, key))
        return event_id

    async def run(self, count: int, rate_per_s: float, start: int = 0) -> None:
        """Publish ``count`` events at ``rate_per_s`` (open loop: a slow publish delays none)."""
        period = 1 / rate_per_s
        began = time.monotonic()
        for n in range(start, start + count):
            await asyncio.sleep(max(0.0, began + (n - start) * period - time.monotonic()))
            await self.publish(n)

    def ids(self) -> set[str]:
        return {event_id for event_id, _ in self.published}

    def order_by_key(self) -> dict[str, list[str]]:
        order: dict[str, list[str]] = defaultdict(list)
        for event_id, key in self.published:
            order[key].append(event_id)
        return order


@dataclass
class GatewayClient:
    """A legacy RITA system posting CloudEvents to the gateway; resends the same id on 503.

    ``statuses`` holds (monotonic time, status or exception name) of every attempt.
    """

    base_url: str
    system: str
    prefix: str
    statuses: list[tuple[float, str]] = field(default_factory=list)
    accepted: list[tuple[str, str]] = field(default_factory=list)
    _token: str | None = None

    async def token(self, http: aiohttp.ClientSession) -> str:
        if self._token is None:
            async with http.post(
                f"{self.base_url}/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": basic_auth("rita", GATEWAY_SECRET)},
            ) as response:
                assert response.status == 200, await response.text()
                self._token = str((await response.json())["access_token"])
        return self._token

    async def send(self, http: aiohttp.ClientSession, n: int) -> str:
        """Post one death until the gateway accepts it (202); return its id."""
        event_id, key = str(uuid.uuid4()), f"{self.prefix}{n:04d}"
        data = {**SAMPLES[DEATH], "entryNumber": key, "firstName": f"Gw{n}"}
        while True:
            headers = {
                "Authorization": f"Bearer {await self.token(http)}",
                "Content-Type": "application/json",
                "ce-specversion": "1.0",
                "ce-id": event_id,
                "ce-source": f"/institutions/rita/systems/{self.system}",
                "ce-type": DEATH,
            }
            wait = 1.0
            try:
                async with http.post(
                    f"{self.base_url}/v1/events", data=json.dumps(data), headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:  # fmt: skip
                    self.statuses.append((time.monotonic(), str(response.status)))
                    text = await response.text()
                    if response.status == 202:
                        self.accepted.append((event_id, key))
                        return event_id
                    assert response.status == 503, f"{response.status}: {text}"
                    body = json.loads(text)  # JSON with a code, never a stack trace
                    assert body["error"] == "broker_unavailable", body
                    wait = min(2.0, float(response.headers.get("Retry-After", "1")))
            except (aiohttp.ClientError, TimeoutError) as error:
                self.statuses.append((time.monotonic(), type(error).__name__))
            await asyncio.sleep(wait)

    async def run(self, count: int, rate_per_s: float) -> None:
        async with aiohttp.ClientSession() as http:
            began = time.monotonic()
            for n in range(count):
                await asyncio.sleep(max(0.0, began + n / rate_per_s - time.monotonic()))
                await self.send(http, n)


# --------------------------------------------------------------------------- reading topics


async def read_topic(
    bootstrap: str,
    topic: str,
    source: str,
    *,
    want: set[str] | None = None,
    wait_s: float = 60.0,
    idle_s: float = 3.0,
) -> list[Any]:
    """Records of ``topic`` whose ``ce_source`` is ``source``, from the beginning.

    Reads until every id of ``want`` was seen (then to the end of what is there), or, without
    ``want``, until ``idle_s`` pass with no record; at most ``wait_s``.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    found: list[Any] = []
    wanted = source.encode()
    deadline = time.monotonic() + wait_s
    try:
        await assign_topics(consumer, [topic])
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                idle_since = time.monotonic()
                found.extend(r for r in batch if dict(r.headers).get("ce_source") == wanted)
            if batches:
                continue
            if want is not None and want <= {header(r, "ce_id") for r in found}:
                break
            if want is None and time.monotonic() - idle_since >= idle_s:
                break
        return found
    finally:
        await consumer.stop()


def header(record: Any, name: str) -> str:
    return bytes(dict(record.headers).get(name, b"")).decode()


async def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Wait until ``condition()`` holds; fail the test after ``seconds``."""
    assert await settle(condition, seconds), f"timed out after {seconds:.0f}s waiting for {what}"


async def settle(condition: Callable[[], bool], seconds: float) -> bool:
    """Wait until ``condition()`` holds, at most ``seconds``; whether it holds.

    For the last wait of a test: what never arrived is then counted as lost.
    """
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)
    return True


# --------------------------------------------------------------------------- accounting


@dataclass
class Accounting:
    """Every event sent, and where it ended: delivered, rejected (with a reason), or lost."""

    sent: set[str]
    delivered: set[str]
    duplicates: int
    rejected: set[str] = field(default_factory=set)
    note: str = ""

    @property
    def lost(self) -> set[str]:
        return self.sent - self.delivered - self.rejected

    @property
    def unexpected(self) -> set[str]:
        return (self.delivered | self.rejected) - self.sent

    def line(self) -> str:
        text = (
            f"sent {len(self.sent)}, delivered {len(self.delivered & self.sent)} (unique), "
            f"duplicates {self.duplicates} (same ids), rejected {len(self.rejected)}, "
            f"lost {len(self.lost)}"
        )
        return f"{text}; {self.note}" if self.note else text

    def check(self) -> None:
        """Print the accounting line; fail if anything was lost or is not this test's."""
        print(f"\naccounting: {self.line()}")
        assert not self.lost, f"lost {len(self.lost)}: {sorted(self.lost)[:10]}"
        assert not self.unexpected, f"never sent: {sorted(self.unexpected)[:10]}"
        assert not (self.delivered & self.rejected), "both delivered and rejected"


@contextlib.asynccontextmanager
async def sampling(every_s: float, sample_once: Callable[[], Any]) -> Any:
    """Call ``sample_once`` (sync, may raise OSError) every ``every_s`` in a thread meanwhile."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                await asyncio.to_thread(sample_once)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await task
