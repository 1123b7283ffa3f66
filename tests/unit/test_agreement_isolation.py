"""One agreement's fault stays its own; the bus's replay claim; what a replay sends back."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from streams.audit.chain import AuditChain
from streams.cli.rejected import replayed_headers
from streams.client.records import BusRecord, RecordFilter
from streams.contract.codec import RegistryUnavailableError
from streams.contract.signing import load_private_key
from streams.pipeline.process import BusKey, DeliveryFailure, Output, Pipeline
from streams.pipeline.replay import REPLAY_HEADERS, replay_claim, replay_headers
from streams.pipeline.validation import OPERATOR, IngressRecord
from streams.registry.model import Subscription
from streams.settings import REPO_ROOT
from tests.unit.pipeline_fixtures import (
    KEY_IDS,
    NOW,
    OfflineSchemas,
    as_record,
    prepared,
    registry_view,
)

DEATH = "tz.go.rita.DeathRegistered"
BUS_KEY = BusKey(
    "ega-d06f8e0a5d19", load_private_key((REPO_ROOT / "deploy/demo-keys/ega.key.pem").read_text())
)
RITA_KEY = load_private_key((REPO_ROOT / "deploy/demo-keys/rita.key.pem").read_text())
PINNED = {
    "id": "pinned-deaths",
    "subscriber": "brela",
    "event_types": [DEATH],
    "fields": ["entryNumber", "deceasedNin"],
    "schema_version": 99,
}


def _apply(pipeline: Pipeline, **agreement: Any) -> None:
    subscription = Subscription.model_validate(agreement)
    value = json.dumps(subscription.model_dump(mode="json")).encode()
    pipeline.view.apply(f"subscription/{subscription.id}", value)


def _pipeline(schemas: OfflineSchemas | None = None) -> Pipeline:
    pipeline = Pipeline(registry_view(), schemas or OfflineSchemas(), BUS_KEY, AuditChain("test"))
    _apply(pipeline, **PINNED)
    return pipeline


def _headers(output: Output) -> dict[str, str]:
    return {name: value.decode() for name, value in output.headers}


def _audits(outputs: list[Output]) -> list[dict[str, Any]]:
    return [json.loads(o.value or b"") for o in outputs if o.topic == "esb.audit"]


def _replayed(copy: Output, offset: int) -> IngressRecord:
    """The copy on esb.rejected.rita, sent back to esb.ingress.rita as ``govesb rejected
    replay`` does."""
    read = BusRecord(0, 7, NOW, copy.key, copy.value, copy.headers)
    return IngressRecord(
        "esb.ingress.rita", 0, offset, copy.key, copy.value, tuple(replayed_headers(read))
    )


async def test_an_agreement_pinned_to_a_missing_version_fails_alone() -> None:
    pipeline = _pipeline()
    event = prepared("rita", DEATH)
    outcome = await pipeline.handle(as_record(event))

    assert outcome.reason is None  # the publisher's event was not refused
    assert outcome.subscribers == ("nida", "utumishi")  # the healthy agreements got it
    assert outcome.failures == (DeliveryFailure("pinned-deaths", "brela"),)
    assert [o.topic for o in outcome.outputs] == [
        "esb.deliver.nida",
        "esb.deliver.utumishi",
        "esb.rejected.rita",
        "esb.audit",
        "esb.audit",
    ]
    copy = outcome.outputs[2]
    assert copy.value == event.value  # the ingress record, as it came
    headers = _headers(copy)
    assert headers["ce_id"] == event.envelope.id
    assert headers["esb_reason"] == "internal"
    assert headers["esb_subscription"] == "pinned-deaths"
    assert "agreement pinned-deaths" in headers["esb_detail"]
    assert "has no registered version 99" in headers["esb_detail"]
    assert headers["esb_replay_for"] == "pinned-deaths"
    failed, routed = _audits(outcome.outputs)
    assert (failed["outcome"], failed["reason"]) == ("failed", "internal")
    assert (failed["subscription"], failed["subscribers"]) == ("pinned-deaths", ["brela"])
    assert failed["event_id"] == event.envelope.id
    assert (routed["outcome"], routed["subscribers"]) == ("routed", ["nida", "utumishi"])
    assert "subscription" not in routed


async def test_every_agreement_failing_still_refuses_nothing_to_the_publisher() -> None:
    pipeline = _pipeline()
    for sub in ("nida-deaths", "utumishi-deaths"):
        _apply(pipeline, **{**PINNED, "id": sub, "subscriber": sub.split("-")[0]})
    outcome = await pipeline.handle(as_record(prepared("rita", DEATH)))
    assert outcome.reason is None
    assert outcome.subscribers == ()
    assert {f.subscription for f in outcome.failures} == {
        "nida-deaths",
        "pinned-deaths",
        "utumishi-deaths",
    }
    copies = [o for o in outcome.outputs if o.topic == "esb.rejected.rita"]
    assert {_headers(c)["esb_reason"] for c in copies} == {"internal"}
    assert _audits(outcome.outputs)[-1]["outcome"] == "routed"


class RefusingDeliverySchemas(OfflineSchemas):
    async def register(self, subject: str, schema: dict[str, Any]) -> int:
        if "nida_deaths" in subject:
            raise ValueError("409 the delivery schema is incompatible")
        return await super().register(subject, schema)


async def test_any_failure_for_one_agreement_is_isolated_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = Pipeline(registry_view(), RefusingDeliverySchemas(), BUS_KEY, AuditChain("test"))
    outcome = await pipeline.handle(as_record(prepared("rita", DEATH)))
    assert outcome.reason is None
    assert outcome.subscribers == ("utumishi",)
    assert outcome.failures == (DeliveryFailure("nida-deaths", "nida"),)
    [copy] = [o for o in outcome.outputs if o.topic == "esb.rejected.rita"]
    assert "409 the delivery schema is incompatible" in _headers(copy)["esb_detail"]
    [logged] = [r for r in caplog.records if "nida-deaths" in r.getMessage()]
    assert logged.exc_info is not None  # an unexpected fault: the operator gets the traceback


class UnreachableVersions(OfflineSchemas):
    async def version_text(self, subject: str, version: int) -> str:
        raise RegistryUnavailableError("schema registry unreachable: connection refused")


async def test_an_unreachable_registry_is_a_retry_not_a_failure() -> None:
    pipeline = _pipeline(UnreachableVersions())
    record = as_record(prepared("rita", DEATH))
    with pytest.raises(RegistryUnavailableError):
        await pipeline.handle(record)
    assert pipeline.chain.seq == 0  # nothing audited: the whole event is handled again
    _apply(pipeline, **{**PINNED, "schema_version": 1})
    pipeline.schemas = OfflineSchemas()
    again = await pipeline.handle(record)  # same position: a re-read, not a duplicate
    assert again.reason is None
    assert again.subscribers == ("nida", "brela", "utumishi")  # by agreement id


async def test_a_replay_after_the_fix_reaches_that_agreement_alone_with_the_same_id() -> None:
    pipeline = _pipeline()
    event = prepared("rita", DEATH)
    first = await pipeline.handle(as_record(event))
    copy = next(o for o in first.outputs if o.topic == "esb.rejected.rita")
    _apply(pipeline, **{**PINNED, "schema_version": 1})  # the operator re-pins the agreement

    outcome = await pipeline.handle(_replayed(copy, offset=9))
    assert outcome.reason is None  # not a duplicate: the bus's claim lets it past the window
    assert outcome.failures == ()
    [delivery, audit] = outcome.outputs
    assert delivery.topic == "esb.deliver.brela"
    headers = _headers(delivery)
    assert headers["ce_id"] == event.envelope.id
    assert headers["esb_subscription"] == "pinned-deaths"
    assert _audits([audit])[0]["subscribers"] == ["brela"]


async def test_a_replay_that_fails_again_is_copied_again() -> None:
    pipeline = _pipeline()
    first = await pipeline.handle(as_record(prepared("rita", DEATH)))
    copy = next(o for o in first.outputs if o.topic == "esb.rejected.rita")
    outcome = await pipeline.handle(_replayed(copy, offset=9))
    assert outcome.subscribers == ()  # the healthy agreements are not sent it twice
    [again] = [o for o in outcome.outputs if o.topic == "esb.rejected.rita"]
    assert _headers(again)["esb_subscription"] == "pinned-deaths"
    assert _headers(again)["esb_source"] == "esb.ingress.rita[0]@9"


async def test_without_the_bus_claim_a_resent_copy_is_a_duplicate() -> None:
    pipeline = _pipeline()
    event = prepared("rita", DEATH)
    first = await pipeline.handle(as_record(event))
    copy = next(o for o in first.outputs if o.topic == "esb.rejected.rita")
    replayed = _replayed(copy, offset=9)
    bare = [(k, v) for k, v in replayed.headers if k not in REPLAY_HEADERS]
    forged = [
        *bare,
        *replay_headers(KEY_IDS["rita"], RITA_KEY, "rita", event.envelope.id, "pinned-deaths",
                        event.value),
    ]  # fmt: skip
    for offset, headers in ((10, bare), (11, forged)):
        record = IngressRecord("esb.ingress.rita", 0, offset, copy.key, copy.value, tuple(headers))
        outcome = await pipeline.handle(record)
        assert outcome.reason == "duplicate", headers


def test_a_replay_claim_holds_only_for_what_the_bus_signed() -> None:
    view = registry_view()
    value = b"\x00\x00\x00\x00\x01payload"
    headers = replay_headers(BUS_KEY.key_id, BUS_KEY.key, "rita", "id-1", "pinned", value)

    def claim(headers: Any = headers, publisher: str = "rita", event_id: str = "id-1",
              body: bytes = value) -> str | None:  # fmt: skip
        return replay_claim(
            headers, publisher, event_id, body, view.keyring, view.key_owners, OPERATOR
        )

    assert claim() == "pinned"
    assert claim(body=value + b"x") is None
    assert claim(event_id="id-2") is None
    assert claim(publisher="nida") is None
    other = [(k, b"utumishi-deaths" if k == "esb_replay_for" else v) for k, v in headers]
    assert claim(other) is None
    assert claim(headers[:2]) is None
    assert claim([*headers[:2], ("esb_replay_sig", b"\xff\xfe")]) is None
    assert claim([]) is None


def test_a_replay_keeps_the_event_and_the_claim_and_drops_the_rest_of_the_bus_headers() -> None:
    record = BusRecord(
        2,
        41,
        NOW,
        b"key",
        b"value",
        (
            ("ce_id", b"id-1"),
            ("ce_signature", b"sig"),
            ("esb_replayed_from", b"rejected[0]@3"),
            ("esb_reason", b"internal"),
            ("esb_detail", b"agreement x: ..."),
            ("esb_source", b"esb.ingress.rita[0]@5"),
            ("esb_subscription", b"x"),
            ("esb_replay_for", b"x"),
            ("esb_replay_keyid", b"ega-1"),
            ("esb_replay_sig", b"c2ln"),
        ),
    )
    assert replayed_headers(record) == [
        ("ce_id", b"id-1"),
        ("ce_signature", b"sig"),
        ("esb_replay_for", b"x"),
        ("esb_replay_keyid", b"ega-1"),
        ("esb_replay_sig", b"c2ln"),
        ("esb_replayed_from", b"rejected[2]@41"),
    ]


def test_the_record_filter_takes_time_ids_and_header_values() -> None:
    def record(event_id: str, minutes: int, reason: str) -> BusRecord:
        headers = (("ce_id", event_id.encode()), ("esb_reason", reason.encode()))
        return BusRecord(0, 0, NOW + dt.timedelta(minutes=minutes), None, None, headers)

    old, new, other = record("a", -5, "internal"), record("b", 5, "internal"), record("c", 5, "x")
    assert RecordFilter()(old)
    assert [r.event_id for r in (old, new, other) if RecordFilter(since=NOW)(r)] == ["b", "c"]
    assert not RecordFilter(ids=frozenset({"b"}))(old)
    by_reason = RecordFilter(headers={"esb_reason": frozenset({"internal"})})
    assert [r.event_id for r in (old, new, other) if by_reason(r)] == ["a", "b"]
    assert not RecordFilter(headers={"esb_subscription": frozenset({"s"})})(old)


def test_an_undeliverable_copy_names_its_agreement_and_can_be_replayed_to_it_alone() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    from streams.pipeline.outputs import undeliverable

    pipeline = _pipeline()
    record = IngressRecord(
        "esb.ingress.rita", 0, 7, b"key", b"\x00\x00\x00\x00\x01payload", (("ce_id", b"id-7"),)
    )
    refused = Output("esb.deliver.utumishi", b"key", b"x" * 10, (("esb_subscription", b"u-d"),))
    copy = undeliverable(
        record, refused, MessageSizeTooLargeError(), limit=1_000_000, claim=pipeline.replay_claim
    )
    headers = _headers(copy)
    assert headers["esb_reason"] == "undeliverable"
    assert headers["esb_subscription"] == "u-d"
    view = pipeline.view
    value = record.value or b""
    agreement = replay_claim(
        copy.headers, "rita", "id-7", value, view.keyring, view.key_owners, OPERATOR
    )
    assert agreement == "u-d"
