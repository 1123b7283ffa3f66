"""One broken agreement next to healthy ones, on the real bus with a real ``govesb worker``.

An agreement pinned to a schema version the registry does not have (``schema_version: 99``)
must not cost the healthy agreements their event, nor tell the publisher its valid event was
bad. The failure is visible (``internal`` on ``esb.rejected.rita`` naming the agreement, the
worker's metric, the audit log), and once the operator re-pins the agreement, ``govesb
rejected replay`` delivers the event to that agreement alone, with the same event id.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from streams.audit.verify import read_audit
from streams.contract.codec import SchemaStore
from streams.contract.jsonavro import to_json
from streams.settings import KafkaSettings
from tests.integration.chaos import (
    apply_registry,
    cli,
    death,
    header,
    new_system,
    read_topic,
    registry_document,
    repin,
    restore_registry,
    rita_publisher,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]


def _metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of a /metrics text, or None when the series is not there."""
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as exposed
    series = re.escape(f"{name}{{{matchers}}}" if labels else name)
    found = re.search(rf"^{series} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else None


async def _audit_of(kafka: str, app_id: str, event_id: str, count: int) -> list[dict[str, Any]]:
    """The audit records the worker ``app_id`` wrote about ``event_id``, once there are
    ``count`` of them (at most 60 s). Its chain ids start with its app id."""
    async with asyncio.timeout(60):
        while True:
            records = await read_audit(KafkaSettings(bootstrap_servers=kafka), "esb.audit")
            mine = [json.loads(v) for _, _, v in records if v and event_id.encode() in v]
            mine = [r for r in mine if r["event_id"] == event_id and r["chain"].startswith(app_id)]
            if len(mine) >= count:
                return mine
            await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_a_broken_agreement_fails_alone_and_is_replayed_after_the_fix(
    kafka: str, registry: str, applied_registry: Path, start_worker, tmp_path: Path
) -> None:
    system = new_system()
    source = f"/institutions/rita/systems/{system}"
    marker = f"Pinned{uuid.uuid4().hex[:6]}"
    broken = {
        "id": f"pinned-{uuid.uuid4().hex[:6]}",
        "subscriber": "brela",
        "purpose": "An agreement pinned to a schema version this registry does not hold.",
        "event_types": ["tz.go.rita.DeathRegistered"],
        "fields": ["entryNumber", "firstName"],
        "filter": [{"field": "firstName", "op": "eq", "value": marker}],  # this test's events
        "schema_version": 1,
    }
    # `registry apply` now refuses a version the schema registry lacks, so the agreement is
    # applied valid and then re-pinned to 99 the way an older tool or a hand-written record
    # would put it on esb.registry: the worker must cope with what the topic holds.
    await apply_registry(kafka, registry, registry_document(None, [broken]), tmp_path)
    await repin(kafka, broken["id"], 99)
    try:
        app_id = f"test-isolation-{uuid.uuid4().hex[:8]}"
        worker = start_worker(app_id)
        async with rita_publisher(kafka, registry, system) as rita:
            event_id = await rita.publish(
                "tz.go.rita.DeathRegistered", death(f"P{uuid.uuid4().hex[:9]}", 0, firstName=marker)
            )
        want = {event_id}

        # The healthy agreements received the event. (Other workers may share this bus and
        # read the same ingress topics: what this worker did is told by its own audit chain
        # and metrics; on the topics, its records are those its code alone writes.)
        to_utumishi = await read_topic(
            kafka, "esb.deliver.utumishi", source, want=want, wait_s=150
        )  # a fresh worker reads the shared ingress topics from the start: allow for that
        assert {header(r, "esb_subscription") for r in to_utumishi} == {"utumishi-deaths"}
        to_nida = await read_topic(kafka, "esb.deliver.nida", source, want=want)
        assert {header(r, "esb_subscription") for r in to_nida} == {"nida-deaths"}
        # RITA was not told its event was bad: the worker routed it and recorded the broken
        # agreement's failure, and refused nothing.
        audit = await _audit_of(kafka, app_id, event_id, 2)
        outcomes = sorted((r["outcome"], r["subscribers"], r.get("subscription")) for r in audit)
        assert outcomes == [
            ("failed", ["brela"], broken["id"]),
            ("routed", ["nida", "utumishi"], None),
        ]
        failed = next(r for r in audit if r["outcome"] == "failed")
        assert failed["reason"] == "internal"
        # The copy on RITA's topic is the bus's own failure, naming the agreement that missed
        # it, ready for a replay.
        rejected = await read_topic(kafka, "esb.rejected.rita", source, want=want)
        [copy] = [r for r in rejected if header(r, "esb_reason") == "internal"]
        assert header(copy, "ce_id") == event_id
        assert header(copy, "esb_subscription") == broken["id"]
        assert "has no registered version 99" in header(copy, "esb_detail")
        # The failure is counted per agreement.
        failures = {"subscription": broken["id"], "subscriber": "brela", "reason": "internal"}
        name = "govesb_pipeline_delivery_failures_total"
        await wait_until(
            lambda: _metric(worker.metrics(), name, **failures) == 1.0, 30, "the failure metric"
        )
        listed = await asyncio.to_thread(
            cli, kafka, registry, "rejected", "list", "--publisher", "rita",
            "--reason", "internal", "--subscription", broken["id"],
        )  # fmt: skip
        assert "1 rejected event(s) of rita" in listed, listed

        # The operator re-pins the agreement to a version the registry has, and replays.
        applied_before = _metric(worker.metrics(), "govesb_registry_records_applied") or 0
        fixed = {**broken, "schema_version": 1}
        await apply_registry(kafka, registry, registry_document(None, [fixed]), tmp_path)
        await wait_until(
            lambda: (
                (_metric(worker.metrics(), "govesb_registry_records_applied") or 0) > applied_before
            ),
            30,
            "the worker to apply the fix",
        )
        replayed = await asyncio.to_thread(
            cli, kafka, registry, "rejected", "replay", "--publisher", "rita",
            "--ids", event_id, "--subscription", broken["id"],
        )  # fmt: skip
        assert "replayed 1 rejected event(s) to esb.ingress.rita" in replayed, replayed

        to_brela = await read_topic(kafka, "esb.deliver.brela", source, want=want)
        assert to_brela
        for record in to_brela:
            assert header(record, "ce_id") == event_id
            assert header(record, "esb_subscription") == broken["id"]
        store = SchemaStore(AsyncSchemaRegistryClient({"url": registry}))
        body = to_json((await store.decode(to_brela[0].value)).record)
        assert set(body) == {"entryNumber", "firstName"}
        assert body["firstName"] == marker
        # The worker's audit chain: the failure, then the replay to that agreement alone (the
        # healthy ones were not sent it twice).
        audit = await _audit_of(kafka, app_id, event_id, 3)
        outcomes = sorted((r["outcome"], r["subscribers"], r.get("subscription")) for r in audit)
        assert outcomes == [
            ("failed", ["brela"], broken["id"]),
            ("routed", ["brela"], None),
            ("routed", ["nida", "utumishi"], None),
        ]
        assert _metric(worker.metrics(), name, **failures) == 1.0
        # ... and the operator's replay itself, naming where the copy came from.
        records = await read_audit(KafkaSettings(bootstrap_servers=kafka), "esb.audit")
        replays = [json.loads(v) for _, _, v in records if v and event_id.encode() in v]
        replays = [r for r in replays if r["outcome"] == "replayed"]
        assert [(r["subscribers"], r["reason"].split("[")[0]) for r in replays] == [
            ([broken["id"]], "from esb.rejected.rita")
        ]
    finally:
        await restore_registry(kafka, registry)
