"""JSON payloads (CLI, HTTP gateway) to Avro values: conversions and errors with field paths."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pytest

from streams.contract.jsonavro import JsonAvroError, from_json, to_json, to_json_bytes

SCHEMA = {
    "type": "record",
    "name": "TitleTransferred",
    "namespace": "tz.go.ardhi",
    "fields": [
        {"name": "transferDate", "type": {"type": "int", "logicalType": "date"}},
        {"name": "registeredAt", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "taxCleared", "type": ["null", {"type": "int", "logicalType": "date"}]},
        {
            "name": "fee",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
        },
        {
            "name": "parties",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Party",
                    "fields": [{"name": "since", "type": {"type": "int", "logicalType": "date"}}],
                },
            },
        },
        {"name": "witness", "type": ["null", "Party"], "default": None},
    ],
}

JSON = {
    "transferDate": "2026-11-20",
    "registeredAt": "2026-11-20T09:30:00Z",
    "taxCleared": None,
    "fee": "15000.50",
    "parties": [{"since": "2001-05-01"}],
    "witness": {"since": "1999-12-31"},
}


def test_logical_types_convert_and_convert_back() -> None:
    value = from_json(SCHEMA, JSON)
    assert value["transferDate"] == dt.date(2026, 11, 20)
    assert value["registeredAt"] == dt.datetime(2026, 11, 20, 9, 30, tzinfo=dt.UTC)
    assert value["fee"] == decimal.Decimal("15000.50")
    assert value["parties"][0]["since"] == dt.date(2001, 5, 1)
    assert value["witness"]["since"] == dt.date(1999, 12, 31)
    assert to_json(value) == JSON


def test_json_bytes_equal_the_converted_value_serialised() -> None:
    value = from_json(SCHEMA, JSON)
    value["photo"] = b"\x00\xffname"  # bytes become base64, as to_json does
    value["note"] = "Dodoma — kituo cha afya"
    expected = json.dumps(to_json(value), ensure_ascii=False, separators=(",", ":")).encode()
    assert to_json_bytes(value) == expected
    assert json.loads(to_json_bytes(value))["registeredAt"] == "2026-11-20T09:30:00Z"
    with pytest.raises(TypeError, match="set"):
        to_json_bytes({"odd": {1, 2}})


@pytest.mark.parametrize(
    ("change", "path", "expected"),
    [
        ({"transferDate": "20/11/2026"}, "TitleTransferred.transferDate", "an ISO date"),
        ({"registeredAt": "2026-11-20T09:30:00"}, "TitleTransferred.registeredAt", "RFC 3339"),
        ({"fee": "15,000"}, "TitleTransferred.fee", "a decimal number"),
        ({"parties": [{"since": "x"}]}, "TitleTransferred.parties[0].since", "an ISO date"),
        ({"taxCleared": "soon"}, "TitleTransferred.taxCleared", "an ISO date"),
    ],
)
def test_a_value_that_cannot_convert_names_its_field_but_not_the_value(
    change: dict, path: str, expected: str
) -> None:
    with pytest.raises(JsonAvroError) as refused:
        from_json(SCHEMA, {**JSON, **change})
    assert refused.value.path == path
    assert expected in str(refused.value)
    assert str(next(iter(change.values()))) not in str(refused.value)


def test_values_of_the_wrong_json_type_are_left_for_validation() -> None:
    assert from_json(SCHEMA, {**JSON, "transferDate": 20261120})["transferDate"] == 20261120
