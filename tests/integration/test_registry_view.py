"""A running registry view on the real broker fails closed on a record it cannot read."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from deploy.worker import DEMO_BUS_KEY
from streams.contract.reasons import EventError, Reason
from streams.pipeline.validation import validate
from streams.registry.model import load_registry
from streams.registry.sync import RegistryView, registry_records
from streams.settings import REPO_ROOT, KafkaSettings
from tests.corpus.malformed import RawName
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


async def test_a_registry_record_with_a_header_name_that_is_not_utf8_does_not_stop_the_view(
    kafka: str, topic_factory: Callable[..., str]
) -> None:
    """The Kafka client decodes header names strictly: one such record used to make every
    view (gateway, sink) fail to load, and a following one stop for good."""
    topic = topic_factory("esb.registry")
    registry, _ = load_registry(REPO_ROOT / "deploy" / "registry.example.yaml")
    assert registry is not None
    records = registry_records(registry)
    newer = json.loads(records["institution/nida"])
    newer["keys"][0] |= {"revoked": True, "revoked_reason": "key compromised"}
    # Not idempotent: aiokafka only lets its own builder carry a producer id.
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        batch = producer.create_batch()
        batch._builder = _DefaultRecordBatchBuilderPy(  # the pure-Python one sends raw names
            2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0,
            batch_size=1 << 20,
        )  # fmt: skip
        for key, value in [*records.items(), ("institution/nida", json.dumps(newer).encode())]:
            headers = [(RawName(b"x-\xff\xfe"), b"1")] if key == "institution/nida" else []
            batch.append(key=key.encode(), value=value, timestamp=None, headers=headers)
        batch.close()
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    view = RegistryView(KafkaSettings(bootstrap_servers=kafka), topic=topic)
    await view.start(follow=False)
    await view.stop()
    assert view.key_owner("rita-e1ad5e26a22d") == "rita"
    assert view.health()["withheld_institutions"] == ["nida"]
    assert _refusal(view) is not None


def test_a_worker_will_not_start_signing_with_a_key_id_the_registry_lacks(
    kafka: str, registry: str, applied_registry: Any, tmp_path: Any
) -> None:
    """What a Kubernetes operator sees who left the delivery key id unset or wrong."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("govesb")), "worker"],
        env={
            **os.environ,
            "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
            "GOVESB_SCHEMA_REGISTRY__URL": registry,
            "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
            "GOVESB_SIGNING_KEY_ID": "ega-000000000000",
            "GOVESB_ALLOW_DEMO_KEYS": "true",
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "key id 'ega-000000000000' is not a current key in esb.registry" in " ".join(
        done.stderr.decode().split()
    )
