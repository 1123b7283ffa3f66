"""Every validation rule: a good event passes; each kind of bad one gets its reason code."""

from __future__ import annotations

import datetime as dt

import pytest

from streams.contract.codec import encode
from streams.contract.envelope import UNREADABLE_HEADER
from streams.contract.reasons import EventError, Reason
from streams.pipeline.duplicates import DuplicateWindow
from streams.pipeline.validation import Limits, validate
from tests.unit.pipeline_fixtures import (
    CATALOG,
    NOW,
    as_record,
    directory,
    prepared,
    registry_view,
    sample,
    writer,
)

CITIZEN = "tz.go.nida.CitizenRegistered"


def _reason(record, schema=None, limits: Limits | None = None, now=None) -> tuple[Reason, str]:
    now = now or dt.datetime.now(dt.UTC)
    with pytest.raises(EventError) as refused:
        validate(record, directory(), schema or writer(CITIZEN), now, limits or Limits())
    return refused.value.reason, refused.value.detail


def _header(event, name: str, value: bytes | None) -> list[tuple[str, bytes]]:
    headers = [(k, v) for k, v in event.headers if k != name]
    return headers if value is None else [*headers, (name, value)]


def test_a_good_event_passes_with_its_payload() -> None:
    event = prepared("nida", CITIZEN)
    valid = validate(as_record(event), directory(), writer(CITIZEN), dt.datetime.now(dt.UTC))
    assert valid.publisher == "nida"
    assert valid.payload == sample(CITIZEN)
    assert valid.envelope.id == event.envelope.id


@pytest.mark.parametrize(
    ("header", "value", "reason", "detail"),
    [
        ("ce_id", None, Reason.MISSING_HEADER, "missing ce_id"),
        ("ce_specversion", b"0.3", Reason.INVALID_HEADER, "ce_specversion"),
        ("ce_type", b"tz.go.nida.CitizenMoved", Reason.UNKNOWN_TYPE, "not in the registry"),
        ("ce_signature", None, Reason.MISSING_HEADER, "ce_signature"),
        ("ce_sigkeyid", b"nida-000000000000", Reason.UNKNOWN_KEY, "is not registered"),
        ("ce_sigkeyid", b"rita-e1ad5e26a22d", Reason.UNKNOWN_KEY, "not a key of nida"),
        ("ce_time", b"2026-11-27T09:00:00.000Z", Reason.BAD_SIGNATURE, "does not verify"),
        # ce_subject is not signed itself: it must equal the signed payload's key field.
        ("ce_subject", b"19900114141010000999", Reason.INVALID_PAYLOAD, "payload's key field"),
    ],
)
def test_envelope_rules(header: str, value: bytes | None, reason: Reason, detail: str) -> None:
    event = prepared("nida", CITIZEN)
    got_reason, got_detail = _reason(as_record(event, headers=_header(event, header, value)))
    assert got_reason is reason
    assert detail in got_detail


def test_a_type_of_another_owner_is_refused() -> None:
    event = prepared("rita", "tz.go.rita.DeathRegistered")
    headers = _header(event, "ce_source", b"/institutions/nida/systems/crvs")
    reason, detail = _reason(as_record(event, topic="esb.ingress.nida", headers=headers))
    assert (reason, detail) == (
        Reason.NOT_OWNER,
        "tz.go.rita.DeathRegistered is owned by rita, not nida",
    )


def test_a_source_that_is_not_the_topics_institution_is_refused() -> None:
    event = prepared("nida", CITIZEN)
    reason, detail = _reason(as_record(event, topic="esb.ingress.tra"))
    assert reason is Reason.SOURCE_MISMATCH
    assert "ce_source names 'nida'" in detail


def test_one_changed_payload_byte_breaks_the_signature() -> None:
    event = prepared("nida", CITIZEN)
    value = bytearray(event.value)
    value[-3] ^= 0x01
    assert _reason(as_record(event, value=bytes(value)))[0] is Reason.BAD_SIGNATURE


def test_an_oversize_value_is_refused_before_anything_else() -> None:
    event = prepared("nida", CITIZEN)
    reason, detail = _reason(as_record(event), limits=Limits(max_value_bytes=64))
    assert reason is Reason.OVERSIZE
    assert "limit is 64" in detail


def test_an_event_from_the_future_is_refused() -> None:
    event = prepared("nida", CITIZEN)
    reason, _ = _reason(as_record(event), now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert reason is Reason.FUTURE_TIME


def _resigned(event, value: bytes):
    """The same envelope with ``value``, correctly signed (so only the payload is wrong)."""
    from streams.contract.signing import load_private_key, sign_event
    from streams.settings import REPO_ROOT

    key = load_private_key((REPO_ROOT / "deploy/demo-keys/nida.key.pem").read_text())
    env = event.envelope
    signature = sign_event(key, env.id, env.source, env.type, env.time, value)
    return as_record(event, value=value, headers=_header(event, "ce_signature", signature.encode()))


def test_unknown_schema_id_other_subject_garbage_and_trailing_bytes() -> None:
    event = prepared("nida", CITIZEN)
    now = dt.datetime.now(dt.UTC)
    unknown = _resigned(event, b"\x00\x00\x00\x30\x39" + event.value[5:])
    with pytest.raises(EventError) as refused:
        validate(unknown, directory(), None, now)
    assert refused.value.reason is Reason.UNKNOWN_SCHEMA_ID

    other = writer("tz.go.tra.TaxPaymentReceived")
    with pytest.raises(EventError) as refused:
        validate(_resigned(event, event.value), directory(), other, now)
    assert refused.value.reason is Reason.SCHEMA_MISMATCH

    for value, reason in [
        (event.value + b"\x00", Reason.TRAILING_BYTES),
        (event.value[:12], Reason.UNDECODABLE),
        (b"\x01" + event.value[1:], Reason.WIRE_FORMAT),
    ]:
        with pytest.raises(EventError) as refused:
            validate(_resigned(event, value), directory(), writer(CITIZEN), now)
        assert refused.value.reason is reason


def test_subject_must_be_the_payload_key() -> None:
    event = prepared("nida", CITIZEN)
    payload = sample(CITIZEN, nin="19990101000000000001")
    value = encode(
        event.value[1:5] and int.from_bytes(event.value[1:5], "big"),
        CATALOG.get(CITIZEN).parsed,
        payload,
    )
    with pytest.raises(EventError) as refused:
        validate(_resigned(event, value), directory(), writer(CITIZEN), dt.datetime.now(dt.UTC))
    assert refused.value.reason is Reason.INVALID_PAYLOAD


SOURCE = "/institutions/nida/systems/crvs"


def test_a_repeated_event_id_is_a_duplicate_but_a_reread_is_not() -> None:
    recent = DuplicateWindow(window=dt.timedelta(hours=1))
    recent.check(SOURCE, "id-1", ("esb.ingress.nida", 0, 10), NOW)
    recent.check(SOURCE, "id-1", ("esb.ingress.nida", 0, 10), NOW)  # the same record read again
    with pytest.raises(EventError) as refused:
        recent.check(SOURCE, "id-1", ("esb.ingress.nida", 2, 99), NOW)
    assert refused.value.reason is Reason.DUPLICATE
    assert "esb.ingress.nida[0]@10" in refused.value.detail
    recent.check(
        SOURCE, "id-1", ("esb.ingress.nida", 2, 99), NOW + dt.timedelta(hours=2)
    )  # expired


GATEWAY_KEY_ID = "ega-811cb62f3e2d"
DELIVERY_KEY_ID = "ega-d06f8e0a5d19"


def _signed_by_the_bus(event, key_file: str, key_id: str, via_gateway: bool = True) -> list:
    """``event``'s headers as the gateway would publish it, signed with an operator key."""
    from streams.contract.signing import load_private_key, sign_event
    from streams.settings import REPO_ROOT

    env = event.envelope
    key = load_private_key((REPO_ROOT / "deploy/demo-keys" / key_file).read_text())
    signature = sign_event(key, env.id, env.source, env.type, env.time, event.value)
    headers = [(k, v) for k, v in event.headers if k not in ("ce_sigkeyid", "ce_signature")] + [
        ("ce_sigkeyid", key_id.encode()),
        ("ce_signature", signature.encode()),
    ]
    return [*headers, ("esb_via", b"gateway")] if via_gateway else headers


def _gateway_directory():
    return directory(registry_view(gateway_keys=[GATEWAY_KEY_ID]))


def test_an_event_the_gateway_signed_with_the_bus_key_is_accepted_for_the_publisher() -> None:
    event = prepared("nida", CITIZEN)
    headers = _signed_by_the_bus(event, "ega-gateway.key.pem", GATEWAY_KEY_ID)
    valid = validate(as_record(event, headers=headers), _gateway_directory(), writer(CITIZEN),
                     dt.datetime.now(dt.UTC))  # fmt: skip
    assert valid.publisher == "nida"


@pytest.mark.parametrize(
    ("key_file", "key_id", "via_gateway", "detail"),
    [
        # The gateway's key, on an event that did not come through the gateway.
        ("ega-gateway.key.pem", GATEWAY_KEY_ID, False,
         "key id 'ega-811cb62f3e2d' is the gateway's: accepted only on events that came "
         "through the gateway"),
        # The delivery key never signs ingress, even marked as the gateway's.
        ("ega.key.pem", DELIVERY_KEY_ID, True, "key id 'ega-d06f8e0a5d19' is not a key of nida"),
        ("ega.key.pem", DELIVERY_KEY_ID, False, "key id 'ega-d06f8e0a5d19' is not a key of nida"),
    ],
)  # fmt: skip
def test_the_operators_keys_sign_ingress_only_in_their_role(
    key_file: str, key_id: str, via_gateway: bool, detail: str
) -> None:
    event = prepared("nida", CITIZEN)
    headers = _signed_by_the_bus(event, key_file, key_id, via_gateway)
    with pytest.raises(EventError) as refused:
        validate(as_record(event, headers=headers), _gateway_directory(), writer(CITIZEN),
                 dt.datetime.now(dt.UTC))  # fmt: skip
    assert (refused.value.reason, refused.value.detail) == (Reason.UNKNOWN_KEY, detail)


def test_a_gateway_key_not_listed_as_such_is_not_accepted_for_another_institution() -> None:
    event = prepared("nida", CITIZEN)
    headers = _signed_by_the_bus(event, "ega-gateway.key.pem", GATEWAY_KEY_ID)
    reason, detail = _reason(as_record(event, headers=headers))  # no gateway_keys configured
    assert (reason, detail) == (
        Reason.UNKNOWN_KEY,
        "key id 'ega-811cb62f3e2d' is not a key of nida",
    )


def test_a_published_demo_key_is_refused_unless_allowed() -> None:
    from streams.settings import DEMO_KEY_IDS, WorkerSettings

    event = prepared("nida", CITIZEN)
    refused_view = registry_view(refused_keys=WorkerSettings().refused_key_ids)
    with pytest.raises(EventError) as refused:
        validate(as_record(event), directory(refused_view), writer(CITIZEN),
                 dt.datetime.now(dt.UTC))  # fmt: skip
    assert (refused.value.reason, refused.value.detail) == (
        Reason.UNKNOWN_KEY,
        "key id 'nida-2e3f1f063154' is a published demo key: refused outside the dev stack",
    )
    assert refused_view.key_owner("nida-2e3f1f063154") is None
    assert set(DEMO_KEY_IDS) == WorkerSettings().refused_key_ids
    allowed = WorkerSettings(allow_demo_keys=True)
    assert allowed.refused_key_ids == frozenset()
    view = registry_view(refused_keys=allowed.refused_key_ids)
    assert validate(as_record(event), directory(view), writer(CITIZEN),
                    dt.datetime.now(dt.UTC)).publisher == "nida"  # fmt: skip


def test_a_worker_will_not_sign_with_a_demo_or_gateway_key_unless_allowed(tmp_path) -> None:
    from streams.settings import WorkerSettings

    key = tmp_path / "bus.key.pem"
    demo = WorkerSettings(signing_key_file=key, signing_key_id="ega-d06f8e0a5d19")
    assert "ega-d06f8e0a5d19 is a published demo key" in (demo.key_problem() or "")
    allowed = demo.model_copy(update={"allow_demo_keys": True})
    assert allowed.key_problem() is None
    gateway = allowed.model_copy(update={"gateway_key_ids": ["ega-d06f8e0a5d19"]})
    assert "is a gateway key" in (gateway.key_problem() or "")
    assert "set GOVESB_SIGNING_KEY_FILE" in (WorkerSettings().key_problem() or "")


def test_a_record_the_consumer_could_not_read_as_sent_is_refused_with_why() -> None:
    event = prepared("nida", CITIZEN)
    why = b"header 7 name 'ce_\\\\xffx' is not UTF-8"
    headers = [(UNREADABLE_HEADER, why), *event.headers, ("ce_\\xffx", b"1")]
    assert _reason(as_record(event, headers=headers)) == (
        Reason.INVALID_HEADER,
        "header 7 name 'ce_\\\\xffx' is not UTF-8",
    )
