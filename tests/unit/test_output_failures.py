"""The worker's output path when the broker says no: errors classified as aiokafka and the
broker mean them, refused records replaced by a rejection the broker takes, one stuck
partition not holding back another, and ``/health`` saying what is wrong.

The agent runs in ``agent.test_context()`` with a producer double whose acknowledgements
and refusals the test decides (no broker here; ``tests/integration/test_chaos_outputs.py``
does the same against a real one).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from streams.audit.chain import AuditChain
from streams.contract.signing import load_private_key
from streams.pipeline.acking import InFlightBudget, Lanes
from streams.pipeline.app import PipelineWorker, create_app
from streams.pipeline.outputs import (
    BATCH_OVERHEAD_BYTES,
    Failure,
    classify,
    cut,
    fits_alone,
    instead,
    is_bare,
    record_size,
    undeliverable,
)
from streams.pipeline.process import BusKey, Output, Pipeline
from streams.pipeline.validation import IngressRecord
from streams.pipeline.writer import MAX_REQUEST_BYTES
from streams.settings import REPO_ROOT, WorkerSettings
from tests.unit.pipeline_fixtures import prepared, registry_view
from tests.unit.test_agent_wiring import OfflineSchemas

CITIZEN = "tz.go.nida.CitizenRegistered"


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (MessageSizeTooLargeError(), Failure.REFUSED),
        (RecordTooLargeError(), Failure.REFUSED),
        (TopicAuthorizationFailedError("esb.deliver.tra"), Failure.REFUSED),
        (UnknownTopicOrPartitionError(), Failure.TRANSIENT),  # refused only if metadata says so
        (NotEnoughReplicasError(), Failure.TRANSIENT),
        (LeaderNotAvailableError(), Failure.TRANSIENT),
        (RequestTimedOutError(), Failure.TRANSIENT),
        (KafkaConnectionError(), Failure.TRANSIENT),
        (KafkaTimeoutError(), Failure.TRANSIENT),
        (ProducerFenced(), Failure.FATAL),
        (OutOfOrderSequenceNumber(), Failure.OUT_OF_SEQUENCE),
        (RuntimeError("not Kafka's"), Failure.FATAL),
    ],
)
def test_errors_are_classified_as_aiokafka_and_the_broker_mean_them(
    error: BaseException, failure: Failure
) -> None:
    assert classify(error) is failure


def _record(value: bytes, headers: tuple[tuple[str, bytes], ...] = ()) -> IngressRecord:
    return IngressRecord("esb.ingress.nida", 2, 41, b"key-1", value, headers)


def test_a_rejection_too_large_for_the_producer_is_cut_but_keeps_its_reason() -> None:
    big = b"x" * 1_048_500
    rejection = Output("esb.rejected.nida", b"key-1", big,
                       (("ce_id", b"id-1"), ("esb_reason", b"oversize"),
                        ("esb_detail", b"the value is 1048400 bytes")))  # fmt: skip
    assert record_size(rejection) > MAX_REQUEST_BYTES
    copy = cut(rejection, MAX_REQUEST_BYTES)
    headers = dict(copy.headers)
    assert copy.topic == "esb.rejected.nida"
    assert copy.value == b""
    assert copy.key == b"key-1"
    assert headers["esb_reason"] == b"oversize"
    assert headers["ce_id"] == b"id-1"
    assert headers["esb_cut"].startswith(b"value dropped (1048500 bytes)")
    assert record_size(copy) <= MAX_REQUEST_BYTES


def test_a_copy_the_broker_refused_even_without_value_is_cut_to_its_bare_reason() -> None:
    rejection = Output("esb.rejected.nida", b"k" * 2000, b"v",
                       (("x-big", b"y" * 5000), ("esb_reason", b"oversize"),
                        ("esb_detail", b"d" * 3000)))  # fmt: skip
    first = instead(_record(b"v"), rejection, MessageSizeTooLargeError(), MAX_REQUEST_BYTES)
    assert first is not None
    assert first.value == b""
    assert not is_bare(first)
    second = instead(_record(b"v"), first, MessageSizeTooLargeError(), MAX_REQUEST_BYTES)
    assert second is not None
    assert is_bare(second)
    assert second.key is None
    headers = dict(second.headers)
    assert set(headers) == {"esb_reason", "esb_detail", "esb_cut"}
    assert headers["esb_reason"] == b"oversize"
    assert len(headers["esb_detail"]) == 1000
    # nothing is left to drop: the worker must fail loudly instead
    assert instead(_record(b"v"), second, MessageSizeTooLargeError(), MAX_REQUEST_BYTES) is None


def test_a_refused_delivery_becomes_an_undeliverable_rejection_naming_topic_size_and_error() -> (
    None
):
    record = _record(b"payload", (("ce_id", b"id-7"),))
    delivery = Output("esb.deliver.tra", b"key-1", b"z" * 500, (("ce_id", b"id-7"),))
    rejection = instead(record, delivery, TopicAuthorizationFailedError("esb.deliver.tra"),
                        MAX_REQUEST_BYTES)  # fmt: skip
    assert rejection is not None
    headers = dict(rejection.headers)
    assert rejection.topic == "esb.rejected.nida"
    assert rejection.value == b"payload"  # the ingress record as it came
    assert headers["esb_reason"] == b"undeliverable"
    assert headers["esb_refused_topic"] == b"esb.deliver.tra"
    assert headers["esb_refused_bytes"] == str(record_size(delivery)).encode()
    assert headers["esb_source"] == b"esb.ingress.nida[2]@41"
    detail = headers["esb_detail"].decode()
    assert detail.startswith(f"esb.deliver.tra refused the {record_size(delivery)}-byte record")
    assert "TopicAuthorizationFailedError" in detail


def test_an_undeliverable_rejection_too_large_is_cut() -> None:
    record = _record(b"p" * 1_048_500)
    delivery = Output("esb.deliver.tra", b"key-1", b"z" * 1_048_000)
    rejection = undeliverable(record, delivery, MessageSizeTooLargeError(),
                              limit=MAX_REQUEST_BYTES)  # fmt: skip
    assert rejection.value == b""
    assert dict(rejection.headers)["esb_reason"] == b"undeliverable"
    assert record_size(rejection) <= MAX_REQUEST_BYTES


def test_an_audit_record_has_no_substitute() -> None:
    audit = Output("esb.audit", b"chain", b"{}")
    assert instead(_record(b"v"), audit, TopicAuthorizationFailedError("esb.audit"), 10) is None


async def test_the_budget_bounds_bytes_in_flight_but_lets_one_big_event_pass_alone() -> None:
    budget = InFlightBudget(max_events=10, max_bytes=100)
    await budget.acquire(150)  # larger than the whole budget, alone: passes
    waiting = asyncio.create_task(budget.acquire(10))
    await asyncio.sleep(0)
    assert not waiting.done()
    await budget.release(150)
    await asyncio.wait_for(waiting, 1)
    assert (budget.events, budget.bytes) == (1, 10)


async def test_an_event_arriving_while_another_waits_for_room_waits_behind_it() -> None:
    budget = InFlightBudget(max_events=1, max_bytes=1_000)
    await budget.acquire(10)  # room for one: taken
    first = asyncio.create_task(budget.acquire(20))
    await asyncio.sleep(0)
    second = asyncio.create_task(budget.acquire(30))  # room or not, it queues behind `first`
    await asyncio.sleep(0)
    assert not first.done()
    assert not second.done()
    await budget.release(10)
    await asyncio.wait_for(first, 1)
    await asyncio.sleep(0.01)
    assert not second.done()
    assert (budget.events, budget.bytes) == (1, 20)
    await budget.release(20)
    await asyncio.wait_for(second, 1)
    assert (budget.events, budget.bytes) == (1, 30)


async def test_a_lane_that_dies_is_reported_and_does_not_hold_other_partitions() -> None:
    acked: list[str] = []
    deaths: list[BaseException] = []
    release = asyncio.Event()

    async def settle(item: str) -> None:
        if item == "boom":
            raise RuntimeError("bug")
        if item == "slow":
            await release.wait()

    async def ack(item: str) -> None:
        acked.append(item)

    lanes: Lanes[str] = Lanes(settle, ack, deaths.append)
    lanes.put(("t", 0), "slow")
    lanes.put(("t", 0), "behind-slow")
    lanes.put(("t", 1), "fast")
    lanes.put(("t", 2), "boom")
    await asyncio.wait_for(_wait(lambda: acked == ["fast"] and bool(deaths)), 1)
    assert isinstance(lanes.dead, RuntimeError)
    assert lanes.oldest_age_s() > 0
    release.set()
    await asyncio.wait_for(_wait(lambda: acked == ["fast", "slow", "behind-slow"]), 1)
    await lanes.cancel()


async def _wait(condition: Any) -> None:
    while not condition():  # noqa: ASYNC110 - polls local state
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- the agent


class RefusingProducer:
    """Acknowledges at once, except what ``refuse(topic, value, headers)`` fails with."""

    def __init__(self, refuse: Any) -> None:
        self.refuse = refuse
        self.sent: list[tuple[str, bytes | None, bytes | None, dict[str, bytes]]] = []
        self.held: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: Any, key: Any = None, headers: Any = None) -> Any:
        headers = dict(headers or [])
        self.sent.append((topic, key, value, headers))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        error = self.refuse(topic, value, headers)
        if error == "hold":
            self.held.append(future)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)
        return future


def _worker(refuse: Any, **settings: Any) -> tuple[Any, PipelineWorker, RefusingProducer]:
    app, worker = create_app(WorkerSettings(app_id="outputs-test", **settings),
                             ["esb.ingress.nida"])  # fmt: skip
    producer = RefusingProducer(refuse)
    worker.producer = producer  # type: ignore[assignment]
    worker.pipeline = Pipeline(
        registry_view(),
        OfflineSchemas(),
        BusKey("ega-d06f8e0a5d19",
               load_private_key((REPO_ROOT / "deploy/demo-keys/ega.key.pem").read_text())),
        AuditChain("outputs-test"),
    )  # fmt: skip
    return app, worker, producer


async def test_an_oversize_record_whose_copy_is_too_large_is_rejected_cut_and_acked() -> None:
    def refuse(topic: str, value: bytes, headers: dict[str, bytes]) -> Any:
        if len(value or b"") > MAX_REQUEST_BYTES - 200:  # as aiokafka's send() would
            return MessageSizeTooLargeError("The message is too large")
        return None

    app, worker, producer = _worker(refuse)
    good = prepared("nida", CITIZEN)
    big = (good.value or b"") + b"\x00" * (1_048_400 - len(good.value or b""))
    async with app.agents["pipeline"].test_context() as context:
        await context.put(big, key=good.key, headers=good.headers, wait=False)
        await asyncio.wait_for(
            _wait(lambda: worker._last_acked.get(("esb.ingress.nida", 0)) == 0), 5
        )
    rejected = [s for s in producer.sent if s[0] == "esb.rejected.nida"]
    assert [len(r[2] or b"") for r in rejected] == [1_048_400, 0]
    assert rejected[1][3]["esb_reason"] == b"oversize"
    assert rejected[1][3]["esb_cut"].startswith(b"value dropped (1048400 bytes)")
    assert worker.metrics.rejections_cut.labels("nida")._value.get() == 1
    assert worker.metrics.rejections.labels("nida", "oversize")._value.get() == 1
    _, body = worker.health()
    assert body["checks"]["producer"]["ok"], body
    await worker.lanes.cancel()


async def test_a_delivery_the_broker_refuses_becomes_an_undeliverable_rejection() -> None:
    def refuse(topic: str, value: bytes, headers: dict[str, bytes]) -> Any:
        return TopicAuthorizationFailedError(topic) if topic == "esb.deliver.tra" else None

    app, worker, producer = _worker(refuse)
    good = prepared("nida", CITIZEN)
    async with app.agents["pipeline"].test_context() as context:
        await context.put(good.value, key=good.key, headers=good.headers, wait=False)
        await asyncio.wait_for(
            _wait(lambda: worker._last_acked.get(("esb.ingress.nida", 0)) == 0), 5
        )
    topics_sent = [s[0] for s in producer.sent]
    assert topics_sent == ["esb.deliver.tra", "esb.audit", "esb.rejected.nida"]
    rejection = producer.sent[2]
    assert rejection[2] == good.value
    assert rejection[3]["esb_reason"] == b"undeliverable"
    assert rejection[3]["esb_refused_topic"] == b"esb.deliver.tra"
    assert b"TopicAuthorizationFailedError" in rejection[3]["esb_detail"]
    metrics = worker.metrics
    assert metrics.undeliverable.labels("esb.deliver.tra")._value.get() == 1
    assert metrics.rejections.labels("nida", "undeliverable")._value.get() == 1
    assert metrics.deliveries.labels("tra", CITIZEN)._value.get() == 0
    assert (
        metrics.output_errors.labels("TopicAuthorizationFailedError", "refused")._value.get() == 1
    )
    await worker.lanes.cancel()


async def test_a_partition_whose_reason_cannot_be_written_halts_alone_and_health_says_so() -> None:
    def refuse(topic: str, value: bytes, headers: dict[str, bytes]) -> Any:
        if topic == "esb.rejected.nida":
            return TopicAuthorizationFailedError(topic)
        return None

    app, worker, _ = _worker(refuse)
    good = prepared("nida", CITIZEN)
    tampered = bytearray(good.value or b"")
    tampered[-1] ^= 1
    other = prepared("nida", CITIZEN)
    async with app.agents["pipeline"].test_context() as context:
        await context.put(bytes(tampered), key=good.key, headers=good.headers, partition=0,
                          wait=False)  # fmt: skip
        await context.put(other.value, key=other.key, headers=other.headers, partition=1,
                          wait=False)  # fmt: skip
        await asyncio.wait_for(_wait(lambda: bool(worker.halted)), 5)
        await asyncio.wait_for(_wait(lambda: ("esb.ingress.nida", 1) in worker._last_acked), 5)
    assert ("esb.ingress.nida", 0) not in worker._last_acked  # never acked: read again later
    status, body = worker.health()
    assert status == 503
    producer_check = body["checks"]["producer"]
    assert not producer_check["ok"]
    ((where, what),) = producer_check["halted_partitions"].items()
    assert where == "esb.ingress.nida[0]"
    assert "esb.ingress.nida[0]@0" in what
    assert good.envelope.id in what
    assert "TopicAuthorizationFailedError" in what
    assert worker.metrics.halted_partitions._value.get() == 1
    await worker.lanes.cancel()


async def test_health_is_503_while_an_output_waits_too_long_and_200_once_it_is_acked() -> None:
    app, worker, producer = _worker(lambda topic, value, headers: "hold", stuck_after_s=0.05)
    good = prepared("nida", CITIZEN)
    async with app.agents["pipeline"].test_context() as context:
        await context.put(good.value, key=good.key, headers=good.headers, wait=False)
        await asyncio.wait_for(_wait(lambda: len(producer.held) == 2), 5)
        await asyncio.wait_for(_wait(lambda: worker.lanes.oldest_age_s() > 0.05), 5)
        status, body = worker.health()
        assert status == 503
        assert not body["checks"]["outputs"]["ok"]
        assert body["checks"]["outputs"]["oldest_in_flight_s"] >= 0
        assert body["checks"]["outputs"]["in_flight_bytes"] > len(good.value or b"")
        for future in producer.held:
            future.set_result(None)
        await asyncio.wait_for(
            _wait(lambda: worker._last_acked.get(("esb.ingress.nida", 0)) == 0), 5
        )
    assert worker.health()[1]["checks"]["outputs"]["ok"]
    await worker.lanes.cancel()


def test_health_is_503_once_the_acker_died() -> None:
    _, worker, _ = _worker(lambda *_: None)
    worker.lanes.dead = RuntimeError("bug")
    status, body = worker.health()
    assert status == 503
    assert body["checks"]["acker"] == {"ok": False, "error": "RuntimeError('bug')"}


def test_a_record_fits_alone_when_it_and_a_batch_header_fit_the_topic_limit() -> None:
    record = Output("esb.deliver.utumishi", b"k", b"v" * 900)
    size = record_size(record)
    assert fits_alone(record, size + BATCH_OVERHEAD_BYTES)
    assert not fits_alone(record, size + BATCH_OVERHEAD_BYTES - 1)
