"""The Confluent wire format with fastavro: exact bytes, and every way a payload can be bad."""

from __future__ import annotations

import io
import struct

import fastavro
import pytest

from streams.contract.codec import HEADER_SIZE, decode_body, encode, schema_id_of
from streams.contract.reasons import EventError, Reason

SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "TaxPaymentReceived",
        "namespace": "tz.go.tra",
        "fields": [
            {"name": "tin", "type": "string"},
            {"name": "amount", "type": "long"},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
)
PAYMENT = {"tin": "123456789", "amount": 1_250_000, "note": "Kodi ya mapato — Q3"}


def test_encoding_is_magic_byte_schema_id_then_schemaless_avro() -> None:
    value = encode(4242, SCHEMA, PAYMENT)
    bare = io.BytesIO()
    fastavro.schemaless_writer(bare, SCHEMA, PAYMENT)
    assert value[:HEADER_SIZE] == b"\x00" + struct.pack(">I", 4242)
    assert value[HEADER_SIZE:] == bare.getvalue()
    assert schema_id_of(value) == 4242
    assert decode_body(SCHEMA, value) == PAYMENT


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x01abc", b"{json}"])
def test_a_value_not_in_wire_format_is_refused(value: bytes) -> None:
    with pytest.raises(EventError) as refused:
        schema_id_of(value)
    assert refused.value.reason is Reason.WIRE_FORMAT


def test_bytes_after_the_record_are_refused() -> None:
    with pytest.raises(EventError) as refused:
        decode_body(SCHEMA, encode(1, SCHEMA, PAYMENT) + b"\x00\x01")
    assert refused.value.reason is Reason.TRAILING_BYTES
    assert "2 byte(s)" in refused.value.detail


def test_a_truncated_payload_is_undecodable() -> None:
    with pytest.raises(EventError) as refused:
        decode_body(SCHEMA, encode(1, SCHEMA, PAYMENT)[:-4])
    assert refused.value.reason is Reason.UNDECODABLE


def test_a_payload_written_with_another_schema_is_undecodable_or_trailing() -> None:
    other = fastavro.parse_schema(
        {"type": "record", "name": "X", "fields": [{"name": "n", "type": "long"}]}
    )
    with pytest.raises(EventError) as refused:
        decode_body(SCHEMA, encode(1, other, {"n": 7}))
    assert refused.value.reason in (Reason.UNDECODABLE, Reason.TRAILING_BYTES)
