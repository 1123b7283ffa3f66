"""Routing by type and filter; data minimisation, masking, pinned versions; delivery schema."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from streams.contract.codec import encode
from streams.pipeline.routing import (
    condition_holds,
    delivery_schema,
    mask_value,
    minimise,
    resolve,
    route,
)
from streams.registry.model import Condition, Subscription
from streams.settings import REPO_ROOT
from tests.unit.pipeline_fixtures import CATALOG, registry_view, sample

SUBSCRIPTIONS = list(registry_view().subscriptions.values())


def test_each_event_type_goes_to_the_agreements_that_match() -> None:
    death = sample("tz.go.rita.DeathRegistered")
    assert [s.id for s in route("tz.go.rita.DeathRegistered", death, SUBSCRIPTIONS)] == [
        "nida-deaths",
        "utumishi-deaths",
    ]
    unknown_person = {**death, "deceasedNin": None}
    assert route("tz.go.rita.DeathRegistered", unknown_person, SUBSCRIPTIONS) == []
    payment = sample("tz.go.tra.TaxPaymentReceived")
    assert route("tz.go.tra.TaxPaymentReceived", payment, SUBSCRIPTIONS) == []
    stamp_duty = {**payment, "taxType": "STAMP_DUTY"}
    assert [s.id for s in route("tz.go.tra.TaxPaymentReceived", stamp_duty, SUBSCRIPTIONS)] == [
        "ardhi-stamp-duty"
    ]


@pytest.mark.parametrize(
    ("op", "value", "holds"),
    [
        ("eq", "Dodoma", True),
        ("ne", "Dodoma", False),
        ("in", ["Arusha", "Dodoma"], True),
        ("not_in", ["Arusha"], True),
        ("gt", "1990-01-01", True),  # dates compare as ISO strings
        ("lt", "1990-01-01", False),
        ("ge", 5, False),  # a string field against a number never holds
        ("exists", None, True),
    ],
)
def test_filter_operators(op: str, value: object, holds: bool) -> None:
    payload = sample("tz.go.nida.CitizenRegistered")
    field = "dateOfBirth" if op in ("gt", "lt") else "region"
    assert condition_holds(Condition(field=field, op=op, value=value), payload) is holds


def test_only_agreed_fields_are_kept_and_marked_ones_masked() -> None:
    identity = next(s for s in SUBSCRIPTIONS if s.id == "tra-citizen-identity")
    citizen = sample("tz.go.nida.CitizenRegistered")
    delivered = minimise(citizen, identity)
    assert list(delivered) == [f for f in citizen if f in identity.fields]
    assert "registrationOffice" not in delivered
    assert delivered["phoneNumber"] == "*********3456"
    assert delivered["nin"] == citizen["nin"]


def test_masking_keeps_only_the_last_4_characters_of_long_values() -> None:
    assert mask_value("+255754123456") == "*********3456"
    assert mask_value("12345678") == "********"
    assert mask_value(None) is None


def test_the_delivery_schema_has_only_the_agreed_fields_and_reads_what_minimise_gives() -> None:
    transfers = next(s for s in SUBSCRIPTIONS if s.id == "tra-title-transfers")
    event_type = CATALOG.get("tz.go.ardhi.TitleTransferred")
    schema = delivery_schema(event_type.schema, event_type.name, transfers)
    assert f"{schema['namespace']}.{schema['name']}" == (
        "tz.go.esb.tra_title_transfers.TitleTransferred"
    )
    assert [f["name"] for f in schema["fields"]] == [
        f for f in event_type.field_names if f in transfers.fields
    ]
    # seller and buyer share the named type Party: defined once, referenced once.
    parsed = fastavro.parse_schema(schema)
    payload = minimise(sample(event_type.name), transfers)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, payload)
    out.seek(0)
    assert fastavro.schemaless_reader(out, parsed, None) == payload


def test_a_pinned_version_reads_newer_events_without_the_new_fields() -> None:
    payment = CATALOG.get("tz.go.tra.TaxPaymentReceived")
    value = encode(7, payment.parsed, sample(payment.name))
    v1 = json.loads((REPO_ROOT / "schemas/tra/history/TaxPaymentReceived.v1.avsc").read_text())
    as_v1 = resolve(value, payment.parsed, fastavro.parse_schema(v1))
    assert "billReference" not in as_v1
    assert as_v1["receiptNumber"] == sample(payment.name)["receiptNumber"]
    stamp = Subscription(
        id="stamp", subscriber="ardhi", event_types=[payment.name], fields=["tin", "amount"]
    )
    assert minimise(as_v1, stamp) == {"tin": as_v1["tin"], "amount": as_v1["amount"]}
