"""The Faust agent's wiring, with ``agent.test_context()``: no broker, no registry.

The pipeline stages are tested on their own elsewhere; here: an event put on the agent's
channel comes out as the right records on the right topics, and is acked only after the
producer acknowledged all of them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from streams.audit.chain import AuditChain
from streams.contract.signing import load_private_key
from streams.pipeline.app import create_app
from streams.pipeline.process import BusKey, Pipeline
from streams.settings import REPO_ROOT, WorkerSettings
from tests.unit.pipeline_fixtures import OfflineSchemas, prepared, registry_view

CITIZEN = "tz.go.nida.CitizenRegistered"


class AckingProducer:
    """Records what is sent; the test releases the broker's acknowledgements."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, dict[str, bytes]]] = []
        self.pending: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: Any, key: Any = None, headers: Any = None) -> Any:
        self.sent.append((topic, key, value, dict(headers or [])))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future

    def acknowledge_all(self) -> None:
        for future in self.pending:
            if not future.done():
                future.set_result(None)


async def _until(condition, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - polls a test double
            await asyncio.sleep(0.01)


async def test_an_event_is_fanned_out_and_acked_only_after_its_outputs() -> None:
    app, worker = create_app(WorkerSettings(app_id="wiring-test"), ["esb.ingress.nida"])
    producer = AckingProducer()
    worker.producer = producer  # type: ignore[assignment]
    worker.pipeline = Pipeline(
        registry_view(),
        OfflineSchemas(),
        BusKey(
            "ega-d06f8e0a5d19",
            load_private_key((REPO_ROOT / "deploy/demo-keys/ega.key.pem").read_text()),
        ),
        AuditChain("wiring-test"),
    )
    agent = app.agents["pipeline"]
    good = prepared("nida", CITIZEN)
    async with agent.test_context() as context:
        await context.put(good.value, key=good.key, headers=good.headers, wait=False)
        await _until(lambda: len(producer.sent) == 2)
        deliver, audit = producer.sent
        assert deliver[0] == "esb.deliver.tra"
        assert deliver[3]["esb_subscription"] == b"tra-citizen-identity"
        assert deliver[3]["ce_id"] == good.envelope.id.encode()
        assert deliver[3]["ce_sigkeyid"] == b"ega-d06f8e0a5d19"
        assert audit[0] == "esb.audit"
        assert json.loads(audit[2])["outcome"] == "routed"
        await asyncio.sleep(0.1)
        assert worker._last_acked == {}  # not acked while the broker has not answered
        producer.acknowledge_all()
        await _until(lambda: worker._last_acked.get(("esb.ingress.nida", 0)) == 0)

        tampered = bytearray(good.value)
        tampered[-1] ^= 1
        bad = prepared("nida", CITIZEN)
        await context.put(bytes(tampered), key=bad.key, headers=bad.headers, wait=False)
        await _until(lambda: len(producer.sent) == 4)
        rejected = producer.sent[2]
        assert rejected[0] == "esb.rejected.nida"
        assert rejected[2] == bytes(tampered)  # the record as it came
        assert rejected[3]["esb_reason"] == b"bad-signature"
        producer.acknowledge_all()
        await _until(lambda: worker._last_acked.get(("esb.ingress.nida", 0)) == 1)
    await worker.lanes.cancel()
    metrics = worker.metrics
    assert metrics.rejections.labels("nida", "bad-signature")._value.get() == 1
    assert metrics.deliveries.labels("tra", CITIZEN)._value.get() == 1
