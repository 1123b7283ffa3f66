"""The audit chain: intact chains verify; a removed or altered record is found, and where."""

from __future__ import annotations

import json

from streams.audit.chain import AuditChain, verify


def _chain(n: int, name: str = "w1") -> list[tuple[int, int, bytes]]:
    chain = AuditChain(name)
    return [
        (0, offset, chain.append(
            outcome="routed", event_id=f"e{offset}", publisher="tra", event_type="T",
            payload_sha256="ab" * 32, subscribers=["ardhi"], source=("esb.ingress.tra", 0, offset),
        )[1])
        for offset in range(n)
    ]  # fmt: skip


def test_intact_interleaved_chains_verify() -> None:
    records = [r for pair in zip(_chain(5, "w1"), _chain(5, "w2"), strict=True) for r in pair]
    reports = verify(records)
    assert set(reports) == {"w1", "w2"}
    assert all(r.intact and r.records == 5 for r in reports.values())


def test_a_removed_record_is_reported_at_the_gap() -> None:
    records = _chain(6)
    del records[2]
    [report] = verify(records).values()
    assert report.breaks == ["partition 0 offset 3: seq 3 follows seq 1 (records missing)"]


def test_an_altered_record_is_reported() -> None:
    records = _chain(4)
    body = json.loads(records[1][2])
    body["subscribers"] = ["ardhi", "tra"]
    records[1] = (0, 1, json.dumps(body).encode())
    [report] = verify(records).values()
    assert report.breaks == ["partition 0 offset 1: seq 1 was altered (hash mismatch)"]


def test_a_record_rewritten_with_a_fresh_hash_breaks_the_next_link() -> None:
    from streams.audit.chain import record_hash

    records = _chain(4)
    body = json.loads(records[1][2])
    body["reason"] = "nothing to see"
    body["hash"] = record_hash(body)
    records[1] = (0, 1, json.dumps(body).encode())
    [report] = verify(records).values()
    assert report.breaks == ["partition 0 offset 2: seq 2 does not link to the previous record"]


def test_garbage_in_the_audit_topic_is_reported() -> None:
    reports = verify([*_chain(2), (1, 7, b"not json")])
    assert reports["(unreadable records)"].breaks == ["partition 1 offset 7: not an audit record"]
