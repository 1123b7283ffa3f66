"""The worker's Faust consumer (``streams.pipeline.consumer``): a message is handed to the
agent's stream inline when nothing has to wait, Faust's rebalance guard still cancels a
hand-over that waits when the flow is suspended, and the aiokafka consumer is reached on the
worker's own loop, not through a thread. No broker: the consumer is built, not started."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from streams.pipeline.app import create_app
from streams.pipeline.consumer import Consumer, LoopConsumerThread, QuietMonitor, run_eagerly
from streams.settings import WorkerSettings


async def test_a_coroutine_that_does_not_wait_finishes_in_its_first_step() -> None:
    async def hand_over() -> str:
        return "queued"

    assert run_eagerly(hand_over()) == (True, "queued")


async def test_a_coroutine_that_waits_goes_on_from_where_it_waits() -> None:
    room = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def hand_over() -> str:
        steps.append("first step")
        await room
        steps.append("after the wait")
        return "queued"

    finished, rest = run_eagerly(hand_over())
    assert not finished
    assert steps == ["first step"]
    room.set_result(None)
    assert await asyncio.wait_for(asyncio.ensure_future(rest), 5) == "queued"
    assert steps == ["first step", "after the wait"]


async def test_cancelling_the_rest_cancels_the_coroutine_where_it_waits() -> None:
    never = asyncio.get_running_loop().create_future()
    queued: list[str] = []

    async def hand_over() -> None:
        await never
        queued.append("message")

    _, rest = run_eagerly(hand_over())
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queued == []
    assert never.cancelled()


async def test_an_error_in_the_first_step_is_raised() -> None:
    async def hand_over() -> None:
        raise ValueError("undecodable")

    with pytest.raises(ValueError, match="undecodable"):
        run_eagerly(hand_over())


def _consumer() -> Any:
    app, _ = create_app(WorkerSettings(app_id="consumer-test"), ["esb.ingress.nida"])
    assert isinstance(app.conf.Monitor(), QuietMonitor)
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    return consumer


async def test_a_message_is_handed_over_in_the_fetchers_own_task() -> None:
    consumer = _consumer()
    handed: list[tuple[str, asyncio.Task[Any] | None]] = []

    async def on_message(message: str) -> None:
        handed.append((message, asyncio.current_task()))

    await consumer._deliver(on_message, "event-1")
    assert handed == [("event-1", asyncio.current_task())]


async def test_a_hand_over_that_waits_completes_while_the_flow_runs() -> None:
    consumer = _consumer()
    room = asyncio.Event()
    handed: list[str] = []

    async def on_message(message: str) -> None:
        await room.wait()  # the stream buffer is full
        handed.append(message)

    delivering = asyncio.ensure_future(consumer._deliver(on_message, "event-1"))
    await asyncio.sleep(0)
    room.set()
    await asyncio.wait_for(delivering, 5)
    assert handed == ["event-1"]


async def test_a_rebalance_cancels_a_hand_over_that_waits() -> None:
    consumer = _consumer()
    handed: list[str] = []

    async def on_message(message: str) -> None:
        await asyncio.Event().wait()  # the stream buffer stays full
        handed.append(message)

    delivering = asyncio.ensure_future(consumer._deliver(on_message, "event-1"))
    await asyncio.sleep(0)
    consumer.stop_flow()  # what Faust does when the group rebalances
    await asyncio.wait_for(delivering, 5)
    assert handed == []


async def test_no_message_is_handed_over_while_the_flow_is_suspended() -> None:
    consumer = _consumer()
    handed: list[str] = []

    async def on_message(message: str) -> None:
        await asyncio.Event().wait()  # flow control holds it until the rebalance ends
        handed.append(message)

    consumer.stop_flow()
    await asyncio.wait_for(consumer._deliver(on_message, "event-1"), 5)
    assert handed == []


async def test_the_consumers_calls_run_on_the_workers_loop_and_thread() -> None:
    consumer = _consumer()
    delegate = consumer._thread
    assert isinstance(delegate, LoopConsumerThread)
    here = (asyncio.get_running_loop(), threading.get_ident())

    async def where() -> tuple[asyncio.AbstractEventLoop, int]:
        await asyncio.sleep(0)
        return asyncio.get_running_loop(), threading.get_ident()

    # Faust's own delegate would queue these to a thread that is not running: no answer in 5 s
    assert await asyncio.wait_for(delegate.call_thread(where), 5) == here
    assert await asyncio.wait_for(delegate.call_thread(lambda n: n + 1, 1), 5) == 2  # plain too
    assert delegate.thread_loop is asyncio.get_running_loop()


async def test_a_rebalance_callback_runs_in_the_callers_task() -> None:
    consumer = _consumer()
    seen: list[tuple[str, asyncio.Task[Any] | None]] = []

    async def revoked(revoked: set[Any]) -> None:
        seen.append(("revoked", asyncio.current_task()))

    async def assigned(assigned: set[Any], generation_id: int = 0) -> None:
        seen.append(("assigned", asyncio.current_task()))

    consumer.on_partitions_revoked = revoked
    consumer.on_partitions_assigned = assigned
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5):  # Faust's would wait for a method queue that is not started
        await consumer.threadsafe_partitions_revoked(loop, set())
        await consumer.threadsafe_partitions_assigned(loop, set(), 3)
    assert seen == [("revoked", asyncio.current_task()), ("assigned", asyncio.current_task())]
