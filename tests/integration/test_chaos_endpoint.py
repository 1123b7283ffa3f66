"""Chaos: the legacy endpoint behind the HTTP sink misbehaves in every way a real one does.

One stream of deaths goes through worker and sink while the endpoint is, in turn:

- **slow**: 2 s per request (within the agreement's 5 s timeout);
- **flapping**: 1.5 s up, 1.5 s down (500, then a TCP reset), over and over;
- **down** for 60 s: first nothing listens on its port (connection refused), then it
  accepts requests and never answers (each attempt ends in the sink's 5 s timeout);
- **garbage**: a first attempt answered with a 200 whose body is HTML (still a 2xx:
  delivered), a 502 with a binary body, bytes that are no HTTP response, a 200 cut short
  (the endpoint did the work; the sink cannot know) or a TCP reset; all but the HTML 200 are
  retried;
- and, throughout, a permanent refusal (422) of some events: those, and only those, go to
  ``esb.dlq.utumishi``.

Nothing is lost, each key keeps its order, and the sink's circuit breaker
(``govesb_sink_breaker_state`` on its /metrics) opens while the endpoint is down, half-opens
for one trial request at a time after each cooldown, and closes when the endpoint is back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from deploy.worker import WorkerProcess
from tests.integration.chaos import (
    Accounting,
    Answer,
    LegacyEndpoint,
    Stream,
    apply_registry,
    breaker_state,
    death,
    header,
    new_system,
    read_topic,
    registry_document,
    restore_registry,
    rita_publisher,
    sampling,
    settle,
    start_sink,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.registry,
    pytest.mark.http,
    pytest.mark.chaos,
    pytest.mark.slow,
]
SLOW_S, FLAPPING_S, DOWN_S, GARBAGE_S = 12.0, 18.0, 60.0, 15.0
RATE_PER_S = 3.0
EVENTS = int((SLOW_S + FLAPPING_S + DOWN_S + GARBAGE_S + 5) * RATE_PER_S)
GARBAGE = ("html-200", "502", "not-http", "truncated", "reset")


class Misbehaviour:
    """What the endpoint does, phase by phase; 422 for the events it can never accept."""

    def __init__(self) -> None:
        self.phase = "ok"
        self.since = time.monotonic()
        self.first_answer: dict[str, str] = {}  # garbage phase: event id -> what it got first

    def enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.monotonic()

    def __call__(self, event_id: str, attempt: int, data: dict[str, Any]) -> Answer:
        if str(data.get("firstName", "")).startswith("Reject"):
            return Answer(status=422, body=b'{"error":"unknown deceased"}')
        if self.phase == "slow":
            return Answer(delay_s=2.0)
        if self.phase == "flapping":
            window = int((time.monotonic() - self.since) / 1.5)
            if window % 2 == 0:
                return Answer()
            return Answer(kind="reset") if window % 4 == 3 else Answer(status=500, body=b"oops")
        if self.phase == "garbage" and attempt == 1:
            kind = GARBAGE[int(event_id[:8], 16) % len(GARBAGE)]
            self.first_answer[event_id] = kind
            if kind == "html-200":
                return Answer(body=b"<html><body>Imepokelewa</body></html>",
                              content_type="text/html")  # fmt: skip
            if kind == "502":
                return Answer(status=502, body=b"\x00\xff\xfe<<bad gateway>>\x80",
                              content_type="application/octet-stream")  # fmt: skip
            return Answer(kind=kind)
        return Answer()


@pytest.mark.timeout(600)
async def test_a_slow_flapping_down_and_garbage_speaking_endpoint_loses_nothing(
    kafka: str, registry: str, applied_registry: Path, start_worker, tmp_path: Path
) -> None:
    system = new_system()
    source = f"/institutions/rita/systems/{system}"
    misbehaviour = Misbehaviour()
    endpoint = LegacyEndpoint(source, behaviour=misbehaviour)
    await endpoint.up()
    await apply_registry(kafka, registry, registry_document(endpoint.url), tmp_path)
    breaker: list[tuple[float, str, int]] = []  # (time, phase, state)
    started = time.monotonic()
    sink: WorkerProcess | None = None
    try:
        start_worker()
        sink = start_sink(kafka, registry, tmp_path / "sink.log", backoff_initial_s="0.1",
                          backoff_max_s="1", breaker_cooldown_s="2")  # fmt: skip

        def sample_breaker() -> None:
            assert sink is not None
            state = breaker_state(sink.metrics())
            if state is not None:
                breaker.append((time.monotonic(), misbehaviour.phase, state))

        def payload(key: str, n: int) -> dict[str, Any]:
            return death(key, n, firstName=f"Reject{n}") if n % 25 == 7 else death(key, n)

        async with (
            rita_publisher(kafka, registry, system) as publisher,
            sampling(0.25, sample_breaker),
        ):
            stream = Stream(publisher, keys=12, prefix=f"E{uuid.uuid4().hex[:6]}",
                            payload=payload)  # fmt: skip
            publishing = asyncio.create_task(stream.run(EVENTS, RATE_PER_S))
            misbehaviour.enter("slow")
            await asyncio.sleep(SLOW_S)
            misbehaviour.enter("flapping")
            await asyncio.sleep(FLAPPING_S)
            misbehaviour.enter("down")
            await endpoint.down()
            await asyncio.sleep(DOWN_S / 2)
            misbehaviour.enter("black hole")
            endpoint.hanging = True
            await endpoint.up()
            await asyncio.sleep(DOWN_S / 2)
            endpoint.hanging = False
            misbehaviour.enter("garbage")
            await asyncio.sleep(GARBAGE_S)
            misbehaviour.enter("ok")
            await publishing
            # published[n] is event n: the stream publishes one at a time, in order.
            refused = {i for n, (i, _) in enumerate(stream.published) if n % 25 == 7}
            await settle(lambda: endpoint.delivered() >= stream.ids() - refused, 240)
            dead = await read_topic(kafka, "esb.dlq.utumishi", source, want=refused)
            await asyncio.sleep(1)  # one more breaker sample after the last delivery
        alive = sink.process.poll() is None
    finally:
        if sink is not None:
            sink.stop()
        await endpoint.down()
        await restore_registry(kafka, registry)

    accounting = Accounting(
        sent=stream.ids(),
        delivered=endpoint.delivered(),
        duplicates=endpoint.duplicates(),
        rejected={header(r, "ce_id") for r in dead},
        note=f"answers {dict(endpoint.answered)}, {endpoint.hung} never answered; "
        f"{time.monotonic() - started:.0f}s",
    )
    accounting.check()
    assert alive, "the sink exited"
    # Dead letters are the permanent refusals, each after one attempt, and nothing else.
    assert accounting.rejected == refused
    assert {header(r, "esb_status") for r in dead} == {"422"}
    assert {header(r, "esb_attempts") for r in dead} == {"1"}
    assert all("unknown deceased" in header(r, "esb_error") for r in dead)
    # Per-key order, as published, of everything the endpoint accepted.
    wanted = {k: [i for i in ids if i not in refused] for k, ids in stream.order_by_key().items()}
    assert endpoint.first_processed_by_key() == wanted
    # Every kind of garbage was served; only the HTML 200 counted as delivered at once.
    first = misbehaviour.first_answer
    assert set(first.values()) == set(GARBAGE), Counter(first.values())
    attempts = Counter(a.event_id for a in endpoint.arrivals)
    for event_id, kind in first.items():
        if event_id in refused:
            continue
        assert attempts[event_id] == (1 if kind == "html-200" else 2), (kind, attempts[event_id])
    # The breaker opened while the endpoint was down, let one trial request through at a
    # time after each cooldown (half-open), and closed when the endpoint came back.
    seen = _transitions(breaker)
    print(f"breaker states seen (phase:state): {seen}")
    states = [state for _, _, state in breaker]
    assert 2 in {state for _, phase, state in breaker if phase == "down"}, seen
    assert 1 in {state for _, phase, state in breaker if phase == "black hole"}, seen
    assert endpoint.hung >= 2  # a trial after each cooldown ...
    assert endpoint.most_hanging_at_once == 1  # ... and only one at a time
    assert states[-1] == 0, seen
    assert 0 in states[states.index(2) :], f"the breaker never closed after opening: {seen}"


def _transitions(samples: list[tuple[float, str, int]]) -> str:
    """``phase:state`` at each change, for the log."""
    changes: list[str] = []
    last: tuple[str, int] | None = None
    for _, phase, state in samples:
        if (phase, state) != last:
            changes.append(f"{phase}:{state}")
            last = (phase, state)
    return " ".join(changes)
