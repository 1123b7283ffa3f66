"""The portal's pure parts: sessions and their expiry, sign-in, what a trace shows to whom,
the catalogue and agreements as pages show them, metrics read into flows, pending changes."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import generate_latest

from connectors.gateway.errors import HttpError
from connectors.http_sink.metrics import SinkMetrics
from connectors.portal import bus, catalogue
from connectors.portal.app import visible_trace
from connectors.portal.sessions import SessionStore, SignIn, Who
from streams.pipeline.metrics import PipelineMetrics
from streams.registry.model import load_registry
from streams.registry.sync import registry_records
from streams.registry.view import ServiceRecord
from streams.settings import REPO_ROOT
from streams.trace.queries import Delivery, Step, Trace

REGISTRY, _ = load_registry(REPO_ROOT / "deploy/registry.example.yaml")
assert REGISTRY is not None
SUBSCRIPTIONS = list(REGISTRY.subscriptions.values())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_expires_after_its_idle_time_and_each_use_restarts_it() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=60, max_sessions=10, timer=clock)
    session = store.new(Who(institution="rita"))
    clock.now += 50
    assert store.get(session.id) is session  # used: its 60 s start again
    clock.now += 50
    assert store.get(session.id) is session
    clock.now += 61
    assert store.get(session.id) is None
    assert store.get(None) is None
    assert store.get("made-up") is None


def test_sessions_have_their_own_unguessable_ids_and_csrf_tokens() -> None:
    store = SessionStore(ttl_s=60, max_sessions=10)
    first, second = store.new(), store.new()
    assert first.id != second.id
    assert first.csrf != second.csrf
    assert len(first.csrf) >= 40
    assert first.csrf_matches(first.csrf)
    assert not first.csrf_matches(second.csrf)
    assert not first.csrf_matches("")
    assert not first.csrf_matches(None)
    store.end(first.id)
    assert store.get(first.id) is None


async def test_institutions_sign_in_with_their_gateway_credentials_and_operators_with_theirs(
) -> None:  # fmt: skip
    sign_in = SignIn({"rita": "rita-secret-000001"}, {"alice": "alice-password-001"}, 3)
    assert await sign_in.check("institution", "rita", "rita-secret-000001", "a") == Who(
        institution="rita"
    )
    assert await sign_in.check("operator", "alice", "alice-password-001", "a") == Who(
        operator="alice"
    )
    for kind, name, secret in [
        ("institution", "rita", "wrong"),
        ("institution", "nida", "rita-secret-000001"),
        ("operator", "alice", "wrong"),
        ("operator", "rita", "rita-secret-000001"),  # a client secret is no operator password
    ]:
        with pytest.raises(HttpError) as refused:
            await sign_in.check(kind, name, secret, f"address-{kind}-{name}")
        assert refused.value.status == 401


async def test_failed_operator_sign_ins_are_limited_per_address() -> None:
    sign_in = SignIn({}, {"alice": "alice-password-001"}, failures_per_ip=3)
    for _ in range(3):
        with pytest.raises(HttpError) as refused:
            await sign_in.check("operator", "alice", "guess", "10.0.0.9")
        assert refused.value.status == 401
    with pytest.raises(HttpError) as limited:
        await sign_in.check("operator", "alice", "alice-password-001", "10.0.0.9")
    assert limited.value.status == 429
    # Another address is not held back.
    assert await sign_in.check("operator", "alice", "alice-password-001", "10.0.0.10")


TRACE = Trace(
    event_id="e1",
    event_type="tz.go.rita.DeathRegistered",
    publisher="rita",
    received_at="2026-12-01T10:00:00.000+00:00",
    accepted=True,
    reason=None,
    detail=None,
    deliveries=(
        Delivery("nida", "nida-deaths", "esb.deliver.nida"),
        Delivery("utumishi", "utumishi-deaths", "esb.deliver.utumishi"),
    ),
    steps=(
        Step("t1", "received", "w"),
        Step("t1", "accepted", "w"),
        Step("t1", "routed", "w", "nida", "nida-deaths"),
        Step("t1", "routed", "w", "utumishi", "utumishi-deaths"),
        Step("t2", "delivered", "sink", "utumishi", status=200, attempt=1),
    ),
)


def test_a_trace_is_whole_for_operators_and_the_publisher_partial_for_a_receiver() -> None:
    assert visible_trace(TRACE, Who(operator="alice")) == TRACE
    assert visible_trace(TRACE, Who(institution="rita")) == TRACE
    nida = visible_trace(TRACE, Who(institution="nida"))
    assert nida is not None
    assert [d.subscriber for d in nida.deliveries] == ["nida"]
    assert [(s.what, s.subscriber) for s in nida.steps] == [
        ("received", None), ("accepted", None), ("routed", "nida"),
    ]  # fmt: skip
    assert visible_trace(TRACE, Who(institution="brela")) is None


def test_a_request_is_seen_by_its_requester_and_its_provider_only() -> None:
    request = dataclasses.replace(
        TRACE,
        publisher="tra",
        deliveries=(),
        steps=(
            Step("t1", "received", "w"),
            Step("t1", "requested", "w", "nida", "tra-verify-nin"),
            Step("t2", "answered", "w", "tra", "tra-verify-nin"),
        ),
    )
    assert visible_trace(request, Who(institution="tra")) == request
    provider = visible_trace(request, Who(institution="nida"))
    assert provider is not None
    assert [s.what for s in provider.steps] == ["received", "requested"]
    assert visible_trace(request, Who(institution="brela")) is None


def test_the_owner_sees_who_receives_its_data_which_fields_masked_and_why() -> None:
    owned = {a.id: a for a in catalogue.as_owner(SUBSCRIPTIONS, REGISTRY.catalog, "nida")}
    identity = owned["tra-citizen-identity"]
    assert identity.subscriber == "tra"
    assert ("phoneNumber", True) in identity.fields
    assert ("nin", False) in identity.fields
    assert identity.purpose.startswith("Match taxpayers to verified identities")
    assert "nida-births" not in owned  # nida receives births, it does not own them
    received = {a.id for a in catalogue.as_subscriber(SUBSCRIPTIONS, REGISTRY.catalog, "nida")}
    assert {"nida-births", "nida-deaths"} <= received
    assert "tra-citizen-identity" not in received


def test_the_services_an_institution_serves_and_those_it_may_call_with_the_fields_it_sees(
) -> None:  # fmt: skip
    records = registry_records(REGISTRY)
    services = [
        ServiceRecord.model_validate_json(v) for k, v in records.items() if k.startswith("service/")
    ]
    grants = list(REGISTRY.document.grants)
    [served] = catalogue.services_served(services, grants, "nida")
    assert (served.api_code, served.provider, served.served_by) == ("VERIFY_NIN", "nida", "http")
    assert {"tra", "moh"} <= set(served.consumers)
    assert served.description
    [called] = catalogue.services_called(services, grants, "tra")
    assert (called.api_code, called.provider) == ("VERIFY_NIN", "nida")
    assert ("phoneNumber", True) in called.fields
    assert ("nin", False) in called.fields
    assert called.purpose.startswith("Verify an individual's identity")
    assert catalogue.services_called(services, grants, "nida") == []
    assert catalogue.services_served(services, grants, "rita") == []
    assert "TIN_STATUS" in {r.api_code for r in catalogue.services_served(services, grants, "tra")}


def test_the_catalogue_shows_fields_with_docs_pii_marks_samples_and_versions() -> None:
    samples = catalogue.load_samples(REPO_ROOT / "schemas/samples.yaml")
    rows = {r.name: r for r in catalogue.catalogue(REGISTRY.catalog, samples)}
    citizen = rows["tz.go.nida.CitizenRegistered"]
    fields = {f.name: f for f in citizen.fields}
    assert fields["phoneNumber"].pii
    assert not fields["region"].pii
    assert fields["nin"].key
    assert all(f.doc for f in citizen.fields)
    assert fields["dateOfBirth"].type == "date"
    assert citizen.versions >= 1
    assert citizen.compatibility == "BACKWARD"
    assert '"nin": "19900114141010000125"' in citizen.sample
    assert catalogue.type_text(["null", "string"]) == "null | string"
    assert catalogue.type_text({"type": "array", "items": "string"}) == "array of string"


def test_metrics_of_the_worker_and_a_sink_become_flows_per_institution() -> None:
    pipeline, sink = PipelineMetrics(), SinkMetrics()
    pipeline.events.labels("rita", "tz.go.rita.DeathRegistered", "routed").inc(5)
    pipeline.events.labels("rita", "tz.go.rita.DeathRegistered", "rejected").inc(2)
    pipeline.rejections.labels("rita", "bad-signature").inc(2)
    pipeline.deliveries.labels("utumishi", "tz.go.rita.DeathRegistered").inc(4)
    pipeline.lag.labels("g", "esb.ingress.rita", "0").set(3)
    sink.deliveries.labels("utumishi", "delivered", "200").inc(4)
    sink.deliveries.labels("utumishi", "dead-lettered", "422").inc(1)
    sink.attempts.labels("utumishi", "503").inc(2)
    sink.breaker.labels("utumishi").set(2)
    pipeline.calls.labels("VERIFY_NIN", "routed").inc(3)
    pipeline.calls.labels("VERIFY_NIN", "answered").inc(2)
    texts = [generate_latest(m.registry).decode() for m in (pipeline, sink)]
    assert bus.calls_by_api(texts) == {"VERIFY_NIN": {"routed": 3, "answered": 2}}
    flows = bus.flows([*texts, "not prometheus {"])
    rita, utumishi = flows["rita"], flows["utumishi"]
    assert (rita.published, rita.rejected, rita.lag) == (7, 2, 3)
    assert rita.rejected_by_reason == {"bad-signature": 2}
    assert (utumishi.delivered, utumishi.http_delivered, utumishi.dead_lettered) == (4, 4, 1)
    assert utumishi.attempts_by_status == {"503": 2}
    assert utumishi.breaker == "open"


def test_pending_changes_are_what_registry_apply_would_write() -> None:
    current = registry_records(REGISTRY)
    path = REPO_ROOT / "deploy/registry.example.yaml"
    assert bus.pending_changes(path, current) == []
    assert bus.pending_changes(None, {}) == []
    changed = dict(current)
    changed.pop("subscription/nida-births")
    changed["subscription/gone"] = b"{}"
    changed["subscription/nida-deaths"] = b"{}"
    assert bus.pending_changes(path, changed) == [
        "+ subscription/nida-births", "- subscription/gone", "~ subscription/nida-deaths",
    ]  # fmt: skip


def test_a_set_aside_row_reads_the_bus_headers() -> None:
    import datetime as dt

    from streams.client.records import BusRecord

    record = BusRecord(0, 7, dt.datetime(2026, 12, 1, tzinfo=dt.UTC), b"k", b"v", (
        ("ce_id", b"e1"), ("ce_type", b"tz.go.rita.DeathRegistered"),
        ("esb_reason", b"bad-signature"), ("esb_detail", b"signature does not verify"),
    ))  # fmt: skip
    row = bus.set_aside_row(record)
    assert dataclasses.astuple(row)[:5] == (
        "2026-12-01T00:00:00+00:00", "e1", "tz.go.rita.DeathRegistered", "bad-signature",
        "signature does not verify",
    )  # fmt: skip


def test_visitors_who_have_not_signed_in_never_push_out_a_signed_in_session() -> None:
    store = SessionStore(ttl_s=60, max_sessions=3)
    signed = store.new(Who(operator="alice"))
    for _ in range(10):
        store.new()
    assert store.get(signed.id) is signed
    assert len(store) == 1
