"""The duplicate window survives a worker restart: a re-send afterwards is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from streams.client.consuming import assign_topics
from streams.client.publisher import Publisher
from streams.contract.catalog import Catalog
from streams.contract.signing import load_private_key
from streams.settings import REPO_ROOT, KafkaSettings, SchemaRegistrySettings
from tests.unit.pipeline_fixtures import KEY_IDS, sample

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]


def rita(kafka: str, registry: str) -> Publisher:
    return Publisher.connect(
        institution="rita",
        system="test",
        key_id=KEY_IDS["rita"],
        key=load_private_key((REPO_ROOT / "deploy/demo-keys/rita.key.pem").read_text()),
        kafka=KafkaSettings(bootstrap_servers=kafka),
        schema_registry=SchemaRegistrySettings(url=registry),
        catalog=Catalog.load(),
    )


async def records_with(
    kafka: str, topic: str, event_id: str, count: int, wait_s: float = 60
) -> list[Any]:
    """The records of ``topic`` carrying ``event_id``: once ``count`` arrived, or ``wait_s``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[Any] = []
    try:
        await assign_topics(consumer, [topic])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while len(found) < count:
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        found += [
                            r for r in batch if dict(r.headers).get("ce_id") == event_id.encode()
                        ]
        return found
    finally:
        await consumer.stop()


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as error:
        return json.loads(error.read())  # type: ignore[no-any-return]


async def test_a_resend_after_a_worker_restart_is_a_duplicate(
    kafka: str, registry: str, start_worker: Any
) -> None:
    group = f"test-duplicates-{uuid.uuid4().hex[:8]}"
    worker = start_worker(group)
    death = sample("tz.go.rita.DeathRegistered", entryNumber=f"77{uuid.uuid4().int % 10**8:08d}")
    async with rita(kafka, registry) as publisher:
        event_id = await publisher.publish("tz.go.rita.DeathRegistered", death)
        assert len(await records_with(kafka, "esb.deliver.nida", event_id, 1)) == 1
        code, _ = await asyncio.to_thread(worker.stop)  # writes what its window holds
        assert code == 0

        restarted = start_worker(group)
        window = health(restarted.web_port)["checks"]["duplicate_window"]
        assert window["ok"], window
        assert window["persisted"], window
        assert window["restored"] >= 1
        await publisher.publish("tz.go.rita.DeathRegistered", death, event_id=event_id)

    (rejected,) = await records_with(kafka, "esb.rejected.rita", event_id, 1)
    headers = dict(rejected.headers)
    assert headers["esb_reason"] == b"duplicate"
    assert b"already received at esb.ingress.rita[" in headers["esb_detail"]
    # Delivered once: the re-send, rejected, went nowhere else.
    assert len(await records_with(kafka, "esb.deliver.nida", event_id, 2, wait_s=5)) == 1
