"""The publisher's pure part: what it puts on the wire, and what it refuses."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from streams.client.publisher import Publisher, PublishError
from streams.contract.catalog import Catalog
from streams.contract.codec import decode_body, schema_id_of
from streams.contract.envelope import Envelope
from streams.contract.signing import KeyRing, load_private_key, verify_event
from streams.settings import REPO_ROOT

KEY = load_private_key((REPO_ROOT / "deploy/demo-keys/tra.key.pem").read_text())
KEY_ID = "tra-3509e6ac2798"


@dataclasses.dataclass
class Payment:
    receiptNumber: str
    controlNumber: str
    tin: str
    payerName: str
    taxType: str
    taxPeriodStart: dt.date | None
    taxPeriodEnd: dt.date | None
    amount: int
    paymentChannel: str
    pspCode: str
    pspReceiptNumber: str
    paidAt: dt.datetime
    receivedAt: dt.datetime
    taxOffice: str | None = None
    billReference: str | None = None


PAYMENT = Payment(
    receiptNumber="RCT-2026-000123",
    controlNumber="991234567890",
    tin="123456789",
    payerName="Amani Traders Ltd",
    taxType="VAT",
    taxPeriodStart=dt.date(2026, 10, 1),
    taxPeriodEnd=dt.date(2026, 10, 31),
    amount=125_000_000,
    paymentChannel="MOBILE_MONEY",
    pspCode="MPESA",
    pspReceiptNumber="QK7H2X9",
    paidAt=dt.datetime(2026, 11, 20, 9, 30, tzinfo=dt.UTC),
    receivedAt=dt.datetime(2026, 11, 20, 9, 30, 5, tzinfo=dt.UTC),
)


@pytest.fixture
def publisher() -> Publisher:
    # prepare() does no I/O: the producer and registry are never touched.
    return Publisher(
        institution="tra",
        system="itax",
        key_id=KEY_ID,
        key=KEY,
        catalog=Catalog.load(),
        schemas=None,  # type: ignore[arg-type]
        producer=None,  # type: ignore[arg-type]
    )


def test_a_prepared_event_is_keyed_encoded_and_verifiably_signed(publisher: Publisher) -> None:
    entry = publisher.event_type("tz.go.tra.TaxPaymentReceived")
    event = publisher.prepare(entry, 17, PAYMENT, correlation_id="batch-42")

    assert event.topic == "esb.ingress.tra"
    assert event.key == b"123456789"
    assert schema_id_of(event.value) == 17
    assert decode_body(entry.parsed, event.value) == dataclasses.asdict(PAYMENT)
    envelope = Envelope.from_headers(event.headers)
    assert envelope.source == "/institutions/tra/systems/itax"
    assert envelope.subject == "123456789"
    assert envelope.correlation_id == "batch-42"
    ring = KeyRing()
    ring.add(KEY_ID, KEY.public_key())
    verify_event(
        ring,
        KEY_ID,
        envelope.signature or "",
        envelope.id,
        envelope.source,
        envelope.type,
        envelope.time,
        event.value,
    )


def test_a_retry_with_the_same_event_id_keeps_the_identity(publisher: Publisher) -> None:
    entry = publisher.event_type("tz.go.tra.TaxPaymentReceived")
    first = publisher.prepare(entry, 17, PAYMENT)
    retry = publisher.prepare(entry, 17, PAYMENT, event_id=first.envelope.id)
    assert retry.envelope.id == first.envelope.id


def test_a_payload_that_does_not_match_names_the_field_not_the_value(
    publisher: Publisher,
) -> None:
    entry = publisher.event_type("tz.go.tra.TaxPaymentReceived")
    bad = dataclasses.replace(PAYMENT, amount="1250000")  # type: ignore[arg-type]
    with pytest.raises(PublishError) as refused:
        publisher.prepare(entry, 17, bad)
    message = str(refused.value)
    assert "tz.go.tra.TaxPaymentReceived.amount: expected long, got str" in message
    assert "1250000" not in message


def test_only_the_owner_may_publish_a_type(publisher: Publisher) -> None:
    with pytest.raises(PublishError, match="owned by nida; tra may not publish it"):
        publisher.event_type("tz.go.nida.CitizenRegistered")
    with pytest.raises(PublishError, match=r"unknown event type 'tz\.go\.tra\.Refund'"):
        publisher.event_type("tz.go.tra.Refund")
