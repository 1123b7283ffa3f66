"""The HTTP sink when the other side fails: the HttpSink and its consumer loop (PartitionFlow)
on the real broker, against a real aiohttp endpoint on loopback.

Each test has a subscriber, delivery topic, dead-letter topic and consumer group of its own,
so nothing else on a shared bus (other tests' sinks of the example registry) joins its group.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, TopicPartition
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink.delivery import CircuitBreaker, RetryPolicy, basic_auth, sign_body
from connectors.http_sink.dlq import DeadLetter, read_dead_letters
from connectors.http_sink.flow import PartitionFlow
from connectors.http_sink.sink import Credentials, HttpSink
from deploy.kafka.launcher import free_port
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID
from streams.audit.chain import AuditChain
from streams.contract.codec import SchemaStore
from streams.contract.envelope import JSON_CONTENT_TYPE, new_envelope
from streams.contract.jsonavro import to_json_bytes
from streams.contract.signing import load_private_key
from streams.registry.model import Endpoint, EndpointAuth
from streams.settings import PRODUCE_BATCH_BYTES, KafkaSettings

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
DEATH = "tz.go.rita.DeathRegistered"
SECRET = "failure-test-secret-3c9e"  # noqa: S105 - the test endpoint's client secret
SECRET_REF = "failure_test_secret"  # noqa: S105 - the name of the secret, not the secret
BUS_KEY = load_private_key(DEMO_BUS_KEY.read_text())
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Arrival:
    """One request that reached the endpoint and what it was answered."""

    event_id: str
    key: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Endpoint_:
    """A legacy endpoint on loopback: ``answer`` decides each delivery's response; a token
    route (``token``) and a route that must never be called (``elsewhere``)."""

    answer: Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]
    token: Handler | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    elsewhere: list[dict[str, str]] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    def url(self, path: str = "/in") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered(self) -> Counter[str]:
        """2xx answers per event id."""
        return Counter(a.event_id for a in self.arrivals if 200 <= a.status < 300)

    async def _deliveries(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        response = await self.answer(request, body)
        key = json.loads(body).get("entryNumber", "") if body.startswith(b"{") else ""
        self.arrivals.append(
            Arrival(request.headers.get("ce-id", ""), key, dict(request.headers), body,
                    response.status)
        )  # fmt: skip
        return response

    async def _token(self, request: web.Request) -> web.StreamResponse:
        assert self.token is not None
        return await self.token(request)

    async def _elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.elsewhere.append(dict(request.headers))
        return web.json_response({"access_token": "stolen", "expires_in": 60})

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Endpoint_]:
        application = web.Application()
        application.router.add_post("/in", self._deliveries)
        application.router.add_post("/oauth/token", self._token)
        application.router.add_post("/elsewhere", self._elsewhere)
        runner = web.AppRunner(application, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()


async def ok(_: web.Request, __: bytes) -> web.StreamResponse:
    return web.json_response({"ok": True})


def deliveries(topic: str, n: int, keys: int) -> list[ConsumerRecord[bytes, bytes]]:
    """``n`` deliveries as the pipeline writes them for an HTTP agreement (JSON body signed by
    the bus), over ``keys`` entry numbers; partition 0, offsets from 0."""
    records = []
    for index in range(n):
        key = f"7009{index % keys:06d}"
        body = to_json_bytes({"entryNumber": key, "firstName": f"Seq{index}"})
        envelope = replace(new_envelope("rita", "crvs", DEATH, key), content_type=JSON_CONTENT_TYPE)
        envelope = sign_body(envelope, body, BUS_KEY, DEMO_BUS_KEY_ID)
        headers = [*envelope.to_headers(), ("esb_subscription", b"failure-test")]
        records.append(ConsumerRecord(topic, 0, index, 0, 0, key.encode(), body, None,
                                      len(key), len(body), headers))  # fmt: skip
    return records


def event_ids(records: list[ConsumerRecord[bytes, bytes]]) -> list[str]:
    return [dict(r.headers)["ce_id"].decode() for r in records]


@pytest.fixture
async def producer(kafka: str) -> AsyncIterator[AIOKafkaProducer]:
    started = AIOKafkaProducer(
        **KafkaSettings(bootstrap_servers=kafka).durable_producer_options(
            linger_ms=2, max_batch_size=PRODUCE_BATCH_BYTES
        )
    )
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def subscriber(topic_factory: Callable[..., str], applied_registry: Path) -> str:
    """A subscriber of this test's own: its ``esb.dlq.<subscriber>`` exists (esb.audit too)."""
    return topic_factory("esb.dlq").removeprefix("esb.dlq.")


@pytest.fixture
async def make_sink(
    registry: str, producer: AIOKafkaProducer, subscriber: str
) -> AsyncIterator[Callable[..., HttpSink]]:
    """HttpSinks for ``subscriber`` as build_sink makes them, with short retries."""
    sinks: list[HttpSink] = []

    def make(endpoint: Endpoint, **options: Any) -> HttpSink:
        sink = HttpSink(
            subscriber=subscriber,
            endpoint=endpoint,
            session=aiohttp.ClientSession(),
            producer=producer,
            schemas=SchemaStore(AsyncSchemaRegistryClient({"url": registry})),
            bus_key=BUS_KEY,
            bus_key_id=DEMO_BUS_KEY_ID,
            chain=AuditChain(f"sink-{subscriber}/{uuid.uuid4()}"),
            credentials=Credentials(SECRET, "failure-test-client"),
            policy=RetryPolicy(4, 0.05, 0.5),
            breaker=CircuitBreaker(3, 1.0),
            **options,
        )
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.session.close()


async def dead_letters(kafka: str, subscriber: str) -> list[DeadLetter]:
    return await read_dead_letters(KafkaSettings(bootstrap_servers=kafka), subscriber)


async def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def oauth2(endpoint: Endpoint_) -> EndpointAuth:
    """OAuth2 client credentials at the test endpoint's token route."""
    token_url = endpoint.url("/oauth/token")
    return EndpointAuth(
        type="oauth2", secret_ref=SECRET_REF, token_url=token_url, username="failure-test-client"
    )


# ----------------------------------------------------------------- the consumer loop

MAX_POLL_INTERVAL_S = 10


async def group_members(admin: AIOKafkaAdminClient, group: str) -> tuple[str, list[str]]:
    """The group's state and its members' ids, as the broker's coordinator sees them."""
    [response] = await admin.describe_consumer_groups([group])
    described = response.to_object()["groups"][0]
    return described["state"], sorted(m["member_id"] for m in described["members"])


@dataclass
class Bus:
    """A delivery topic of 3 partitions and sink consumer loops in one group, as run_sink
    wires them (``max_poll_interval_ms`` 10 s); records published in order, per key."""

    kafka: str
    topic: str
    group: str
    producer: AIOKafkaProducer
    admin: AIOKafkaAdminClient
    published: list[tuple[str, str]] = field(default_factory=list)  # (event id, key)
    loops: list[tuple[AIOKafkaConsumer, asyncio.Event, asyncio.Task[None]]] = field(
        default_factory=list
    )

    async def start_sink(self, sink: HttpSink, commit_interval_s: float = 0.5) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka, group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_interval_ms=MAX_POLL_INTERVAL_S * 1000,
            session_timeout_ms=6000, heartbeat_interval_ms=1000,
        )  # fmt: skip
        flow = PartitionFlow(
            consumer, sink, max_records=50, wait_s=3, commit_interval_s=commit_interval_s
        )
        consumer.subscribe([self.topic], listener=flow)
        await consumer.start()
        stopping = asyncio.Event()
        self.loops.append((consumer, stopping, asyncio.create_task(flow.run(stopping))))
        return consumer

    async def publish(self, n: int, keys: int) -> None:
        for record in deliveries(self.topic, n, keys):
            await self.producer.send_and_wait(
                self.topic, record.value, key=record.key, headers=record.headers
            )
            self.published.append((event_ids([record])[0], (record.key or b"").decode()))

    async def all_committed(self) -> None:
        """Until the group's committed offsets are the topic's end offsets (30 s at most)."""
        partitions = [TopicPartition(self.topic, p) for p in range(3)]
        consumer = self.loops[0][0]
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(30):
            while True:
                committed = await self.admin.list_consumer_group_offsets(self.group)
                if {p: committed[p].offset for p in partitions if p in committed} == ends:
                    return
                await asyncio.sleep(0.2)

    def check_delivered_once_in_order(self, endpoint: Endpoint_) -> None:
        """Every published record delivered exactly once, each key in publishing order."""
        assert endpoint.delivered() == Counter({event_id: 1 for event_id, _ in self.published})
        by_key: dict[str, list[str]] = defaultdict(list)
        for arrival in endpoint.arrivals:
            if 200 <= arrival.status < 300:
                by_key[arrival.key].append(arrival.event_id)
        for key, ids in by_key.items():
            assert ids == [e for e, k in self.published if k == key]

    async def stop(self) -> None:
        for consumer, stopping, running in self.loops:
            stopping.set()
            await asyncio.wait_for(running, 30)
            await consumer.stop()


@pytest.fixture
async def bus(
    kafka: str, topic_factory: Callable[..., str], group_id: str, producer: AIOKafkaProducer
) -> AsyncIterator[Bus]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    made = Bus(kafka, topic_factory("esb.deliver", partitions=3), group_id, producer, admin)
    try:
        yield made
    finally:
        await made.stop()
        await admin.close()


class Outage:
    """An endpoint that answers 503 (``Retry-After: 1``) while down, 200 otherwise."""

    def __init__(self) -> None:
        self.down = False

    async def __call__(self, _: web.Request, __: bytes) -> web.StreamResponse:
        if self.down:
            return web.Response(status=503, text="maintenance", headers={"Retry-After": "1"})
        return web.json_response({"ok": True})


@pytest.mark.timeout(180)
async def test_an_endpoint_down_longer_than_max_poll_interval_keeps_the_sink_in_its_group(
    kafka: str, bus: Bus, make_sink: Callable[..., HttpSink]
) -> None:
    outage = Outage()
    async with Endpoint_(outage).serving() as endpoint:
        sink = make_sink(Endpoint(url=endpoint.url(), timeout_s=5))
        consumer = await bus.start_sink(sink)
        await wait_for(lambda: len(consumer.assignment()) == 3, 30)
        await bus.publish(12, keys=6)
        await wait_for(lambda: len(endpoint.delivered()) == 12, 30)
        before = await group_members(bus.admin, bus.group)
        assert before[0] == "Stable"
        assert len(before[1]) == 1

        outage.down = True
        outage_started = time.monotonic()
        await bus.publish(18, keys=6)
        # The outage itself is what is tested: it outlasts max_poll_interval_ms.
        await asyncio.sleep(MAX_POLL_INTERVAL_S + 5 - (time.monotonic() - outage_started))
        during = await group_members(bus.admin, bus.group)
        refused = sum(1 for a in endpoint.arrivals if a.status == 503)
        outage.down = False
        await wait_for(lambda: len(endpoint.delivered()) == 30, 60)
        after = await group_members(bus.admin, bus.group)
        await bus.all_committed()

    assert refused >= 1
    assert during == before, "the sink left its group while the endpoint was down"
    assert after == before
    bus.check_delivered_once_in_order(endpoint)  # no rebalance: nothing delivered twice
    assert await dead_letters(kafka, sink.subscriber) == []


@pytest.mark.timeout(180)
async def test_a_sink_joining_while_deliveries_wait_takes_over_without_loss(
    kafka: str, bus: Bus, make_sink: Callable[..., HttpSink], subscriber: str
) -> None:
    outage = Outage()
    async with Endpoint_(outage).serving() as endpoint:
        first = await bus.start_sink(make_sink(Endpoint(url=endpoint.url(), timeout_s=5)))
        await wait_for(lambda: len(first.assignment()) == 3, 30)
        outage.down = True
        await bus.publish(18, keys=6)
        await wait_for(lambda: sum(1 for a in endpoint.arrivals if a.status == 503) >= 3, 30)
        # A second sink joins the group: the first gives partitions up, though their
        # deliveries still wait (not committed, so the new owner delivers them).
        second = await bus.start_sink(make_sink(Endpoint(url=endpoint.url(), timeout_s=5)))
        await wait_for(lambda: bool(second.assignment()) and len(first.assignment()) < 3, 60)
        _, members = await group_members(bus.admin, bus.group)
        outage.down = False
        await bus.publish(6, keys=6)
        await wait_for(lambda: len(endpoint.delivered()) == 24, 60)
        await bus.all_committed()

    assert len(members) == 2
    assert first.assignment() | second.assignment() == {
        TopicPartition(bus.topic, p) for p in range(3)
    }
    bus.check_delivered_once_in_order(endpoint)
    assert await dead_letters(kafka, subscriber) == []


@pytest.mark.timeout(120)
async def test_a_rebalance_commits_what_was_delivered_at_once_not_at_the_next_interval(
    kafka: str, bus: Bus, make_sink: Callable[..., HttpSink], subscriber: str
) -> None:
    async with Endpoint_(Outage()).serving() as endpoint:
        endpoint_config = Endpoint(url=endpoint.url(), timeout_s=5)
        first = await bus.start_sink(make_sink(endpoint_config), commit_interval_s=600)
        await wait_for(lambda: len(first.assignment()) == 3, 30)
        await bus.publish(18, keys=6)
        await wait_for(lambda: len(endpoint.delivered()) == 18, 30)
        # delivered, and resumed, but not committed: the interval is ten minutes
        committed = await bus.admin.list_consumer_group_offsets(bus.group)
        assert all(committed[p].offset <= 0 for p in committed if p.topic == bus.topic)
        second = await bus.start_sink(make_sink(endpoint_config), commit_interval_s=600)
        await wait_for(lambda: bool(second.assignment()) and len(first.assignment()) < 3, 60)
        await bus.all_committed()  # within 30 s: the rebalance committed them
        await bus.publish(6, keys=6)
        await wait_for(lambda: len(endpoint.delivered()) == 24, 60)

    bus.check_delivered_once_in_order(endpoint)  # the new owner delivered nothing again
    assert await dead_letters(kafka, subscriber) == []


# ------------------------------------------------------------------- the token endpoint


async def test_a_token_endpoint_down_then_up_delivers_everything_and_dead_letters_nothing(
    kafka: str, make_sink: Callable[..., HttpSink], subscriber: str
) -> None:
    token_requests: list[int] = []
    issued: set[str] = set()

    async def token(request: web.Request) -> web.StreamResponse:
        token_requests.append(1)
        if len(token_requests) <= 8:  # down for its first 8 requests (the breaker opens)
            return web.Response(status=503, text="token service restarting")
        assert request.headers["Authorization"] == basic_auth("failure-test-client", SECRET)
        issued.add(value := f"tok-{len(token_requests)}")
        return web.json_response({"access_token": value, "token_type": "bearer", "expires_in": 60})

    async def answer(request: web.Request, _: bytes) -> web.StreamResponse:
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in issued:
            return web.Response(status=401, text="no or wrong token")
        return web.json_response({"ok": True})

    async with Endpoint_(answer, token=token).serving() as endpoint:
        auth = oauth2(endpoint)
        sink = make_sink(Endpoint(url=endpoint.url(), timeout_s=5, auth=auth))
        records = deliveries(f"esb.deliver.{subscriber}", 6, keys=3)
        for record in records:
            sink.add(record)
        await asyncio.wait_for(sink.flush(), 90)

    assert len(token_requests) > 8
    assert endpoint.delivered() == Counter({event_id: 1 for event_id in event_ids(records)})
    assert not [a for a in endpoint.arrivals if a.status == 401]  # never sent without a token
    assert await dead_letters(kafka, subscriber) == []


async def test_a_token_endpoint_refusing_the_client_dead_letters_with_its_answer(
    kafka: str, make_sink: Callable[..., HttpSink], subscriber: str
) -> None:
    async def token(_: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "invalid_client"}, status=401)

    async with Endpoint_(ok, token=token).serving() as endpoint:
        auth = oauth2(endpoint)
        sink = make_sink(Endpoint(url=endpoint.url(), timeout_s=5, auth=auth))
        [record] = deliveries(f"esb.deliver.{subscriber}", 1, keys=1)
        sink.add(record)
        await asyncio.wait_for(sink.flush(), 30)

    assert endpoint.arrivals == []  # nothing sent without a token
    [dead] = await dead_letters(kafka, subscriber)
    assert dead.event_id == event_ids([record])[0]
    assert dead.header("esb_error").startswith("token endpoint: HTTP 401: ")
    assert "invalid_client" in dead.header("esb_error")
    assert sink.breaker.state == "closed"


async def test_no_redirect_is_followed_by_the_token_request_nor_the_delivery(
    kafka: str, make_sink: Callable[..., HttpSink], subscriber: str
) -> None:
    async with Endpoint_(ok).serving() as endpoint:

        async def moved(_: web.Request) -> web.StreamResponse:
            raise web.HTTPTemporaryRedirect(endpoint.url("/elsewhere"))

        endpoint.token = moved
        auth = oauth2(endpoint)
        oauth = make_sink(Endpoint(url=endpoint.url(), timeout_s=5, auth=auth))
        records = deliveries(f"esb.deliver.{subscriber}", 2, keys=2)
        oauth.add(records[0])
        await asyncio.wait_for(oauth.flush(), 30)
        redirected = make_sink(Endpoint(url=endpoint.url("/oauth/token"), timeout_s=5))
        redirected.add(records[1])
        await asyncio.wait_for(redirected.flush(), 30)

    assert endpoint.elsewhere == []  # neither the credentials nor the data went there
    letters = {letter.event_id: letter for letter in await dead_letters(kafka, subscriber)}
    token_refused, delivery_refused = (letters[i] for i in event_ids(records))
    assert token_refused.header("esb_error") == (
        "token endpoint: HTTP 307: redirects are not followed: the URL in the registry must be "
        "the final one"
    )
    assert delivery_refused.header("esb_status") == "307"
    assert delivery_refused.header("esb_attempts") == "1"
    assert "redirects are not followed" in delivery_refused.header("esb_error")


# ------------------------------------------------------------------------- HMAC, bodies


async def test_each_attempt_carries_an_hmac_signature_with_its_own_timestamp(
    kafka: str, make_sink: Callable[..., HttpSink], subscriber: str
) -> None:
    async def answer(request: web.Request, body: bytes) -> web.StreamResponse:
        if not endpoint.arrivals:  # the first attempt: come back in 1 s
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.json_response({"ok": True})

    async with Endpoint_(answer).serving() as endpoint:
        auth = EndpointAuth(type="hmac", secret_ref=SECRET_REF)
        sink = make_sink(Endpoint(url=endpoint.url(), timeout_s=5, auth=auth))
        [record] = deliveries(f"esb.deliver.{subscriber}", 1, keys=1)
        sink.add(record)
        await asyncio.wait_for(sink.flush(), 30)

    assert [a.status for a in endpoint.arrivals] == [503, 200]
    stamps = []
    for arrival in endpoint.arrivals:
        fields = dict(
            part.split("=", 1) for part in arrival.headers["X-GovESB-Signature"].split(",")
        )
        expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + arrival.body,
                            hashlib.sha256).hexdigest()  # fmt: skip
        assert hmac.compare_digest(fields["v1"], expected)
        stamps.append(int(fields["t"]))
    assert stamps[1] > stamps[0], "the retry was signed with the first attempt's timestamp"


async def endless(status: int, request: web.Request) -> web.StreamResponse:
    """A response whose body never ends (until the client goes away)."""
    response = web.StreamResponse(status=status, headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    chunk = b"x" * 65_536
    with contextlib.suppress(ConnectionError):
        for _ in range(100_000):  # 6.5 GB at most
            await response.write(chunk)
    return response


async def test_an_endless_response_body_is_read_only_up_to_the_cap(
    kafka: str, make_sink: Callable[..., HttpSink], subscriber: str
) -> None:
    records = deliveries(f"esb.deliver.{subscriber}", 2, keys=2)
    accepted_id, refused_id = event_ids(records)

    async def answer(request: web.Request, _: bytes) -> web.StreamResponse:
        return await endless(200 if request.headers["ce-id"] == accepted_id else 422, request)

    async with Endpoint_(answer).serving() as endpoint:
        sink = make_sink(Endpoint(url=endpoint.url(), timeout_s=5), max_response_bytes=1024)
        for record in records:
            sink.add(record)
        await asyncio.wait_for(sink.flush(), 30)

    # One attempt each: the 200 counts as delivered, the 422 is dead-lettered with its status,
    # and its error keeps a short excerpt of the body (not a timeout after reading it).
    assert Counter(a.event_id for a in endpoint.arrivals) == {accepted_id: 1, refused_id: 1}
    [dead] = await dead_letters(kafka, subscriber)
    assert dead.event_id == refused_id
    assert dead.header("esb_status") == "422"
    assert dead.header("esb_attempts") == "1"
    assert dead.header("esb_error") == "HTTP 422: " + "x" * 200
