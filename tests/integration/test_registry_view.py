"""A running registry view on the real broker fails closed on a record it cannot read."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from streams.contract.reasons import EventError, Reason
from streams.pipeline.validation import validate
from streams.registry.model import load_registry
from streams.registry.sync import RegistryView, registry_records
from streams.settings import REPO_ROOT, KafkaSettings
from tests.unit.pipeline_fixtures import as_record, directory, prepared, writer

pytestmark = [pytest.mark.kafka]

CITIZEN = "tz.go.nida.CitizenRegistered"


def _refusal(view: RegistryView) -> tuple[Reason, str] | None:
    try:
        validate(as_record(prepared("nida", CITIZEN)), directory(view), writer(CITIZEN),
                 dt.datetime.now(dt.UTC))  # fmt: skip
    except EventError as error:
        return error.reason, error.detail
    return None


async def test_a_newer_format_revocation_stops_a_running_view_accepting_the_key(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("esb.registry")
    registry, _ = load_registry(REPO_ROOT / "deploy" / "registry.example.yaml")
    assert registry is not None
    records = registry_records(registry)
    settings = KafkaSettings(bootstrap_servers=kafka)
    producer = AIOKafkaProducer(**settings.durable_producer_options())
    await producer.start()
    view = RegistryView(settings, topic=topic)
    try:
        for key, value in records.items():
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
        await view.start()
        assert _refusal(view) is None  # nida's key is accepted
        assert view.health()["ok"] is True
        nida_changed = asyncio.Event()
        view.on_change(lambda key: nida_changed.set() if key == "institution/nida" else None)

        # A newer tool revokes nida's key, in a format this view does not know.
        newer = json.loads(records["institution/nida"])
        newer["format"] = 2
        newer["keys"][0] |= {"revoked": True, "revoked_reason": "key compromised"}
        await producer.send_and_wait(topic, json.dumps(newer).encode(), key=b"institution/nida")

        await asyncio.wait_for(nida_changed.wait(), 20)
        assert _refusal(view) == (
            Reason.UNKNOWN_KEY,
            "the registry record of nida cannot be read by the bus (malformed or of a newer "
            "format): its keys are withheld until it is rewritten",
        )
        health = view.health()
        assert health["ok"] is False
        assert health["withheld_institutions"] == ["nida"]
        assert [u["key"] for u in health["unreadable"]] == ["institution/nida"]
        assert not [s for s in view.subscriptions.values() if s.subscriber == "nida"]
        assert view.key_owner("rita-e1ad5e26a22d") == "rita"
    finally:
        await view.stop()
        await producer.stop()


def test_a_workers_health_shows_its_registry_view(start_worker: Callable[..., Any]) -> None:
    worker = start_worker()
    health = worker.health()
    assert health is not None
    view = health["checks"]["registry_view"]
    assert (view["ok"], view["loaded"], view["stale"]) == (True, True, False)
    assert isinstance(view["unreadable"], list)
    assert isinstance(view["withheld_institutions"], list)
