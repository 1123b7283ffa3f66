"""Chaos: a poison agreement — one whose transformation crashes for some valid events — costs
only itself: the other agreements still receive every event, in order, the publisher is not
told its events were bad, and the partition keeps flowing.

The crash is a real one: an agreement pinned to a schema version the schema registry does
not have (``schema_version: 99``; lint cannot know which versions a registry holds), whose
filter selects only some payloads. Every such event fails in ``Pipeline.deliver``
(``LookupError`` from the registry) for that agreement alone: the pipeline copies it to
``esb.rejected.rita`` as the bus's own failure (``internal``, naming the agreement) instead
of crashing the agent, which would stall every partition the worker holds, or refusing the
event for every agreement.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.integration.chaos import (
    Accounting,
    Stream,
    apply_registry,
    death,
    header,
    new_system,
    read_topic,
    registry_document,
    repin,
    restore_registry,
    rita_publisher,
)

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(300)
async def test_a_poison_record_is_rejected_with_its_reason_and_its_partition_keeps_flowing(
    kafka: str, registry: str, applied_registry: Path, start_worker, tmp_path: Path
) -> None:
    system = new_system()
    source = f"/institutions/rita/systems/{system}"
    marker = f"Poison{uuid.uuid4().hex[:6]}"
    broken = {
        "id": f"chaos-pinned-{uuid.uuid4().hex[:6]}",
        "subscriber": "nida",
        "purpose": "An agreement pinned to a schema version this registry does not hold.",
        "event_types": ["tz.go.rita.DeathRegistered"],
        "fields": ["entryNumber", "firstName"],
        "filter": [{"field": "firstName", "op": "eq", "value": marker}],
        "schema_version": 1,
    }
    await apply_registry(kafka, registry, registry_document(None, [broken]), tmp_path)
    await repin(kafka, broken["id"], 99)  # as an older tool would: apply now refuses it
    try:
        worker = start_worker()
        started = time.monotonic()
        entry = f"P{uuid.uuid4().hex[:9]}"  # one key: one partition, in order
        async with rita_publisher(kafka, registry, system) as publisher:
            stream = Stream(publisher, keys=1, prefix=entry)
            poison: set[str] = set()
            for n in range(40):
                if n % 10 == 4:
                    poison.add(await stream.publish(n, death(f"{entry}0000", n, firstName=marker)))
                else:
                    await stream.publish(n)
        good = stream.ids() - poison

        sent = stream.ids()
        deliveries = await read_topic(kafka, "esb.deliver.nida", source, want=sent, wait_s=120)
        rejections = await read_topic(kafka, "esb.rejected.rita", source, want=poison)
        took = time.monotonic() - started
        http_deliveries = await read_topic(kafka, "esb.deliver.utumishi", source, want=sent)
        ingress = await read_topic(kafka, "esb.ingress.rita", source, want=stream.ids())
    finally:
        await restore_registry(kafka, registry)

    delivered_ids = [
        header(r, "ce_id") for r in deliveries if header(r, "esb_subscription") == "nida-deaths"
    ]
    failures = {header(r, "ce_id"): (header(r, "esb_reason"), header(r, "esb_detail"),
                                     header(r, "esb_subscription"))
                for r in rejections}  # fmt: skip
    accounting = Accounting(
        sent=stream.ids(),
        delivered=set(delivered_ids),
        duplicates=len(delivered_ids) - len(set(delivered_ids)),
        note=f"{len(poison)} events the poison agreement cannot take among {len(good)} others "
        f"on one partition, all settled {took:.1f}s after the worker started",
    )
    accounting.check()
    # The poison agreement's events, and only they, were copied back as the bus's failure.
    assert set(failures) == poison
    # ... and they shared one ingress partition with the good ones, which followed them.
    assert len({r.partition for r in ingress}) == 1
    offsets = {header(r, "ce_id"): r.offset for r in ingress}
    assert max(offsets[i] for i in good) > max(offsets[i] for i in poison)
    for reason, detail, subscription in failures.values():
        assert reason == "internal"
        assert subscription == broken["id"]
        assert "processing failed" in detail
        assert "no registered version 99" in detail
    # Every event arrived, in publish order, to both agreements that hold; nothing to the
    # poison one. (In order as a subsequence: a redelivery, or another worker sharing this
    # bus, may interleave copies; with neither, the two lists are equal.)
    arrived = iter(delivered_ids)
    assert all(i in arrived for i, _ in stream.published), delivered_ids
    assert {header(r, "ce_id") for r in http_deliveries} == stream.ids()
    assert not [r for r in deliveries if header(r, "esb_subscription") == broken["id"]]
    metrics = worker.metrics()
    assert f'reason="internal",subscriber="nida",subscription="{broken["id"]}"' in metrics
    health = worker.health()
    assert health is not None
    assert health["status"] == "ok", health
