"""The worker's Faust consumer (``streams.pipeline.consumer``): a message is handed to the
agent's stream inline when nothing has to wait, and Faust's rebalance guard still cancels a
hand-over that waits when the flow is suspended. No broker: the consumer is built, not
started."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.pipeline.app import create_app
from streams.pipeline.consumer import Consumer, QuietMonitor, run_eagerly
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
