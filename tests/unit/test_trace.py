"""The trace index without Kafka: audit records in, timelines and tracker answers out."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from streams.audit.chain import SUBJECT_KEY_PURPOSE, AuditChain, subject_digest, verify
from streams.contract.signing import generate_private_key
from streams.trace.entries import parse_audit, parse_receipt
from streams.trace.queries import Asker, Refused, trace, track
from streams.trace.store import Batch, SqliteStore, open_store

KEY = b"k" * 32
NIN = "19900101-12345-00001-23"
T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class Recorder:
    """Keeps the lookups the tracker records (the Kafka one is tested in integration)."""

    def __init__(self) -> None:
        self.lookups: list[tuple[str, str, bool, int]] = []

    async def record(self, asker: str, subject: str, allowed: bool, found: int) -> None:
        self.lookups.append((asker, subject, allowed, found))


def agreement(id_: str, subscriber: str, fields: list[str], mask: list[str] = ()) -> bytes:  # type: ignore[assignment]
    return json.dumps(
        {"id": id_, "subscriber": subscriber, "event_types": ["tz.go.nida.CitizenRegistered"],
         "fields": fields, "mask": list(mask), "purpose": f"purpose of {id_}",
         "delivery": "http" if subscriber == "utumishi" else "kafka"}
    ).encode()  # fmt: skip


def fill(store: SqliteStore) -> tuple[str, str]:
    """A delivered event (one HTTP retry) and a rejected one; return their ids."""
    worker, sink = AuditChain("worker/h/1/0"), AuditChain("sink-utumishi/h/2/0")
    delivered, rejected = "e-delivered", "e-rejected"
    subject = subject_digest(KEY, NIN)
    records = [
        worker.append(outcome="routed", event_id=delivered, publisher="nida",
                      event_type="tz.go.nida.CitizenRegistered", payload_sha256="ab" * 32,
                      subscribers=["tra", "utumishi"], agreements=["tra-id", "utumishi-id"],
                      source=("esb.ingress.nida", 0, 7), time=at(0), subject=subject),
        worker.append(outcome="rejected", event_id=rejected, publisher="nida",
                      event_type="tz.go.nida.CitizenRegistered", payload_sha256=None,
                      reason="bad-signature", detail="signature does not verify with nida-1",
                      time=at(1), subject=subject),
        sink.append(outcome="retrying", event_id=delivered, publisher="nida",
                    event_type="tz.go.nida.CitizenRegistered", payload_sha256=None,
                    subscribers=["utumishi"], reason="status=503 attempts=1 latency_ms=4",
                    time=at(2)),
        sink.append(outcome="delivered", event_id=delivered, publisher="nida",
                    event_type="tz.go.nida.CitizenRegistered", payload_sha256=None,
                    subscribers=["utumishi"], reason="status=200 attempts=2 latency_ms=9",
                    time=at(3)),
    ]  # fmt: skip
    batch = Batch(entries=[e for _, v in records if (e := parse_audit(v))])
    batch.agreements = [
        ("v1", parse_agreement(agreement("tra-id", "tra", ["nin", "firstName"]), at(-60))),
        ("v1", parse_agreement(agreement("utumishi-id", "utumishi", ["nin"], ["nin"]), at(-60))),
    ]
    batch.owners = {"tz.go.nida.CitizenRegistered": "nida"}
    batch.positions = {("esb.audit", 0): len(records)}
    store.write(batch, not_before="2000-01-01")
    return delivered, rejected


def parse_agreement(value: bytes, moment: dt.datetime):  # type: ignore[no-untyped-def]
    from streams.trace.entries import parse_agreement as parse

    found = parse(value, int(moment.timestamp() * 1000))
    assert found is not None
    return found


def test_new_audit_fields_are_chained_and_parsed_and_old_records_keep_their_form() -> None:
    chain = AuditChain("c")
    _, plain = chain.append(outcome="received", event_id="e", publisher="p", event_type="t",
                            payload_sha256=None)  # fmt: skip
    _, full = chain.append(outcome="rejected", event_id="e", publisher="p", event_type="t",
                           payload_sha256=None, reason="duplicate", detail="x" * 1000,
                           subject="s" * 64, agreements=["b", "a"])  # fmt: skip
    assert {"subject", "agreements", "detail"}.isdisjoint(json.loads(plain))
    assert all(r.intact for r in verify([(0, 0, plain), (0, 1, full)]).values())
    entry = parse_audit(full)
    assert entry is not None
    assert (entry.agreements, entry.subject, len(entry.detail or "")) == (("a", "b"), "s" * 64, 300)
    assert parse_audit(b"not json") is None
    assert parse_audit(b'["chain"]') is None
    assert parse_receipt("status=503 attempts=2 latency_ms=41").status == 503
    assert parse_receipt("status=0 attempts=3 latency_ms=41").status is None


def test_the_subject_key_is_derived_one_way_and_hashes_are_not_the_key() -> None:
    bus = generate_private_key("secp256k1")
    key = bus.derive_key(SUBJECT_KEY_PURPOSE)
    assert (
        key
        == bus.derive_key(SUBJECT_KEY_PURPOSE)
        != generate_private_key().derive_key(SUBJECT_KEY_PURPOSE)
    )
    assert len(key) == 32
    assert subject_digest(key, NIN) != subject_digest(KEY, NIN)
    assert NIN not in subject_digest(key, NIN)


def test_a_trace_shows_every_step_with_its_time(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "index.sqlite")
    delivered, rejected = fill(store)
    found = trace(store, delivered)
    assert found is not None
    assert (found.accepted, found.received_at) == (True, "2026-12-01T09:00:00.000+00:00")
    assert [(d.subscriber, d.agreement, d.topic) for d in found.deliveries] == [
        ("tra", "tra-id", "esb.deliver.tra"),
        ("utumishi", "utumishi-id", "esb.deliver.utumishi"),
    ]
    assert [(s.time[11:19], s.what, s.subscriber, s.status, s.attempt) for s in found.steps] == [
        ("09:00:00", "received", None, None, None),
        ("09:00:00", "accepted", None, None, None),
        ("09:00:00", "routed", "tra", None, None),
        ("09:00:00", "routed", "utumishi", None, None),
        ("09:00:02", "attempt", "utumishi", 503, 1),
        ("09:00:03", "delivered", "utumishi", 200, 2),
    ]
    refused = trace(store, rejected)
    assert refused is not None
    assert (refused.accepted, refused.reason) == (False, "bad-signature")
    assert refused.detail == "signature does not verify with nida-1"
    assert trace(store, "unknown") is None


def test_reading_the_same_records_again_changes_nothing_and_old_rows_go(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    store = SqliteStore(path)
    delivered, _ = fill(store)
    before = trace(store, delivered)
    fill(store)  # the same records again (a restart before positions moved, a rebuild)
    assert trace(store, delivered) == before
    assert store.positions() == {("esb.audit", 0): 4}
    assert store.prune("2026-12-01T09:00:02.500+00:00") == 3
    assert [s.what for s in trace(store, delivered).steps] == ["delivered"]  # type: ignore[union-attr]
    store.close()
    assert NIN.encode() not in path.read_bytes()
    store = open_store(path)
    store.reset()
    assert (store.positions(), trace(store, delivered)) == ({}, None)


async def test_the_tracker_answers_operators_and_owners_and_records_every_lookup(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "index.sqlite")
    fill(store)
    recorder = Recorder()
    answer = await track(store, KEY, NIN, Asker(operator="alice"), recorder)
    assert [(d.subscriber, d.agreement, d.fields, d.masked, d.purpose, d.status)
            for d in answer.disclosures] == [
        ("tra", "tra-id", ("nin", "firstName"), (), "purpose of tra-id", None),
        ("utumishi", "utumishi-id", ("nin",), ("nin",), "purpose of utumishi-id", 200),
    ]  # fmt: skip
    assert answer.disclosures[1].received_at == "2026-12-01T09:00:03.000+00:00"
    owner = await track(store, KEY, NIN, Asker(institution="nida"), recorder)
    assert owner.disclosures == answer.disclosures
    with pytest.raises(Refused):
        await track(store, KEY, NIN, Asker(institution="brela"), recorder)
    with pytest.raises(Refused):  # the same answer whether the key is known or not
        await track(store, KEY, "another", Asker(institution="brela"), recorder)
    subject = subject_digest(KEY, NIN)
    assert recorder.lookups[:3] == [
        ("operator:alice", subject, True, 2),
        ("institution:nida", subject, True, 2),
        ("institution:brela", subject, False, 0),
    ]
    with pytest.raises(ValueError, match="either"):
        Asker(operator="alice", institution="nida")


def registry_record(offset: int, key: str, value: bytes | None, moment: dt.datetime) -> Any:
    from aiokafka import ConsumerRecord

    return ConsumerRecord(
        "esb.registry", 0, offset, int(moment.timestamp() * 1000), 0, key.encode(), value,
        None, 0, 0, (),
    )  # fmt: skip


async def test_the_fields_shown_are_the_agreements_as_they_were_when_delivered(
    tmp_path: Path,
) -> None:
    from streams.trace.index import batch_of

    store = SqliteStore(tmp_path / "index.sqlite")
    fill(store)  # delivered at 09:00:00 under tra-id (nin, firstName)
    narrow = agreement("tra-id", "tra", ["nin"])
    wide = agreement("tra-id", "tra", ["nin", "firstName", "phoneNumber"])
    records = [
        registry_record(0, "subscription/tra-id", wide, at(-30)),  # changed before delivery
        registry_record(1, "subscription/tra-id", narrow, at(30)),  # and after it
        registry_record(2, "subscription/tra-id", wide, at(60)),  # the same bytes again
        registry_record(3, "subscription/tra-id", None, at(90)),  # removed: history stays
        registry_record(4, "event-type/x", b"not json", at(90)),
        registry_record(5, "event-type/y", b'{"name": "y", "owner": "tra"}', at(90)),
    ]
    batch = batch_of(records)
    assert len(batch.agreements) == 3
    assert batch.owners == {"y": "tra"}
    assert batch.positions == {("esb.registry", 0): 6}
    store.write(batch, not_before="2000-01-01")
    store.write(batch_of(records), not_before="2000-01-01")  # read again: nothing changes
    answer = await track(store, KEY, NIN, Asker(operator="alice"), Recorder())
    tra = next(d for d in answer.disclosures if d.agreement == "tra-id")
    assert tra.fields == ("nin", "firstName", "phoneNumber")
    assert len(store.agreement_versions(["tra-id"])) == 4


async def test_the_worker_audits_the_hashed_key_the_agreements_and_the_rejection_detail() -> None:
    from streams.contract.signing import load_private_key
    from streams.pipeline.process import BusKey, Pipeline
    from streams.settings import REPO_ROOT
    from tests.unit.pipeline_fixtures import as_record, prepared, registry_view
    from tests.unit.test_agent_wiring import OfflineSchemas

    bus = load_private_key((REPO_ROOT / "deploy/demo-keys/ega.key.pem").read_text())
    pipeline = Pipeline(registry_view(), OfflineSchemas(), BusKey("ega", bus), AuditChain("t"))
    good = prepared("nida", "tz.go.nida.CitizenRegistered")
    routed = (await pipeline.handle(as_record(good))).outputs[-1]
    body = json.loads(routed.value or b"")
    assert (body["outcome"], body["agreements"]) == ("routed", ["tra-citizen-identity"])
    assert body["subject"] == subject_digest(
        bus.derive_key(SUBJECT_KEY_PURPOSE), good.envelope.subject
    )
    assert good.envelope.subject.encode() not in (routed.value or b"")

    tampered = bytearray(good.value)
    tampered[-1] ^= 1
    bad = prepared("nida", "tz.go.nida.CitizenRegistered")
    rejected = (await pipeline.handle(as_record(bad, value=bytes(tampered)))).outputs[-1]
    body = json.loads(rejected.value or b"")
    assert (body["outcome"], body["reason"]) == ("rejected", "bad-signature")
    assert body["detail"] == "signature does not verify with nida-2e3f1f063154"
    assert "agreements" not in body


def test_a_request_s_trace_shows_its_routing_and_its_answer(tmp_path: Path) -> None:
    from streams.contract.requests import answer_id

    store = SqliteStore(tmp_path / "index.sqlite")
    worker = AuditChain("worker/h/3/0")
    request = "0f8fad5b-d9cb-469f-a165-70867728950e"
    records = [
        worker.append(outcome="requested", event_id=request, publisher="tra",
                      event_type="tz.go.nida.VerifyNinRequest", payload_sha256="cd" * 32,
                      subscribers=["nida"], agreements=["tra-verify-nin"],
                      source=("esb.ingress.tra", 0, 3), time=at(0), detail="api VERIFY_NIN"),
        worker.append(outcome="answered", event_id=answer_id(request), publisher="nida",
                      event_type="tz.go.nida.VerifyNinResponse", payload_sha256="ef" * 32,
                      subscribers=["tra"], agreements=["tra-verify-nin"],
                      source=("esb.ingress.nida", 1, 9), time=at(0.2),
                      detail=f"api VERIFY_NIN, request {request}"),
    ]  # fmt: skip
    batch = Batch(entries=[e for _, v in records if (e := parse_audit(v))])
    batch.positions = {("esb.audit", 0): len(records)}
    store.write(batch, not_before="2000-01-01")
    found = trace(store, request)
    assert found is not None
    assert (found.accepted, found.publisher) == (True, "tra")
    assert [(s.what, s.subscriber, s.agreement) for s in found.steps] == [
        ("received", None, None),
        ("accepted", None, None),
        ("requested", "nida", "tra-verify-nin"),
        ("answered", "tra", "tra-verify-nin"),
    ]
    assert found.steps[-1].time > found.steps[0].time


async def test_the_tracker_shows_what_a_requester_was_told_about_a_key(tmp_path: Path) -> None:
    """A NIN asked about through VERIFY_NIN: the answer's fields, under the grant, to whom."""
    from streams.contract.requests import answer_id
    from streams.trace.index import batch_of

    store = SqliteStore(tmp_path / "index.sqlite")
    grant = json.dumps(
        {"id": "tra-verify-nin", "consumer": "tra", "api_code": "VERIFY_NIN",
         "fields": ["nin", "valid", "firstName"], "mask": [], "purpose": "verify identity"}
    ).encode()  # fmt: skip
    service = json.dumps(
        {"api_code": "VERIFY_NIN", "provider": "nida",
         "request_type": "tz.go.nida.VerifyNinRequest",
         "response_type": "tz.go.nida.VerifyNinResponse"}
    ).encode()  # fmt: skip
    registry = batch_of([registry_record(0, "grant/tra-verify-nin", grant, at(-60)),
                         registry_record(1, "service/VERIFY_NIN", service, at(-60))])  # fmt: skip
    worker = AuditChain("worker/h/4/0")
    request = "0f8fad5b-d9cb-469f-a165-70867728950e"
    _, answered = worker.append(
        outcome="answered", event_id=answer_id(request), publisher="nida",
        event_type="tz.go.nida.VerifyNinResponse", payload_sha256="ef" * 32,
        subscribers=["tra"], agreements=["tra-verify-nin"], time=at(1),
        subject=subject_digest(KEY, NIN),
    )  # fmt: skip
    entry = parse_audit(answered)
    assert entry is not None
    registry.entries.append(entry)
    registry.positions[("esb.audit", 0)] = 1
    store.write(registry, not_before="2000-01-01")
    recorder = Recorder()
    told = await track(store, KEY, NIN, Asker(institution="nida"), recorder)  # the data owner
    assert [(d.subscriber, d.agreement, d.fields, d.purpose, d.delivery, d.owner)
            for d in told.disclosures] == [
        ("tra", "tra-verify-nin", ("nin", "valid", "firstName"), "verify identity", "answer",
         "nida"),
    ]  # fmt: skip
    with pytest.raises(Refused):
        await track(store, KEY, NIN, Asker(institution="tra"), recorder)  # not tra's data
