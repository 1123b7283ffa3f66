"""The CloudEvents-on-Kafka envelope: what is accepted and why anything is refused."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from streams.contract.envelope import Envelope, format_time, new_envelope, parse_time
from streams.contract.reasons import EventError, Reason


def _headers(**overrides: str | None) -> list[tuple[str, bytes]]:
    values = {
        "ce_specversion": "1.0",
        "ce_id": "5f0c1a6e-8d7e-4a53-9a55-3b0a3f8d2c11",
        "ce_source": "/institutions/nida/systems/crvs",
        "ce_type": "tz.go.nida.CitizenRegistered",
        "ce_time": "2026-11-27T08:15:00.123Z",
        "ce_subject": "19900114141010000125",
        "content-type": "application/avro",
    }
    values.update(overrides)
    return [(name, value.encode()) for name, value in values.items() if value is not None]


def test_a_new_envelope_survives_the_trip_through_kafka_headers() -> None:
    envelope = new_envelope(
        "tra", "itax", "tz.go.tra.TaxPaymentReceived", "123456789", correlation_id="c-1"
    ).signed("tra-3509e6ac2798", "MEUCIQ==")
    back = Envelope.from_headers(envelope.to_headers())
    assert back == envelope
    assert (back.institution, back.system) == ("tra", "itax")
    assert uuid.UUID(back.id).version == 4
    assert dict(envelope.to_headers())["ce_sigkeyid"] == b"tra-3509e6ac2798"


def test_headers_as_a_mapping_or_str_values_are_read_too() -> None:
    as_map = {name: value.decode() for name, value in _headers()}
    assert Envelope.from_headers(as_map).subject == "19900114141010000125"


@pytest.mark.parametrize(
    ("overrides", "reason", "detail"),
    [
        ({"ce_id": None}, Reason.MISSING_HEADER, "missing ce_id"),
        ({"ce_type": None, "ce_time": None}, Reason.MISSING_HEADER, "missing ce_type, ce_time"),
        ({"ce_subject": ""}, Reason.MISSING_HEADER, "missing ce_subject"),
        ({"ce_specversion": "0.3"}, Reason.INVALID_HEADER, "ce_specversion is '0.3'"),
        ({"ce_id": "not-a-uuid"}, Reason.INVALID_HEADER, "ce_id is not a UUID"),
        ({"ce_id": "{6f1c2a9e-0b7d-4c51-9a1e-2f3b4c5d6e7f}"}, Reason.INVALID_HEADER, "not a UUID"),
        ({"ce_id": "6f1c2a9e0b7d4c519a1e2f3b4c5d6e7f"}, Reason.INVALID_HEADER, "not a UUID"),
        ({"ce_id": "6f1c2a9e-0b7d-4c51-9a1e-2f3b4c5d6e7f\n"}, Reason.INVALID_HEADER, "not a UUID"),
        ({"ce_source": "/institutions/nida"}, Reason.INVALID_HEADER, "ce_source must be"),
        ({"ce_source": "nida/crvs"}, Reason.INVALID_HEADER, "ce_source must be"),
        ({"ce_time": "yesterday"}, Reason.INVALID_HEADER, "ce_time is not an RFC 3339"),
        ({"ce_time": "2026-11-27T08:15:00"}, Reason.INVALID_HEADER, "ce_time is not an RFC"),
        ({"content-type": "application/json"}, Reason.INVALID_HEADER, "content-type is"),
    ],
)
def test_a_bad_envelope_is_refused_with_its_reason(
    overrides: dict[str, str | None], reason: Reason, detail: str
) -> None:
    with pytest.raises(EventError) as refused:
        Envelope.from_headers(_headers(**overrides))
    assert refused.value.reason is reason
    assert detail in refused.value.detail


def test_a_header_that_is_not_utf8_is_refused() -> None:
    headers = [*_headers(ce_subject=None), ("ce_subject", b"\xff\xfe")]
    with pytest.raises(EventError) as refused:
        Envelope.from_headers(headers)
    assert refused.value.reason is Reason.INVALID_HEADER
    assert "ce_subject is not valid UTF-8" in refused.value.detail


def test_the_first_of_repeated_headers_counts() -> None:
    headers = [*_headers(), ("ce_type", b"tz.go.nida.Other")]
    assert Envelope.from_headers(headers).type == "tz.go.nida.CitizenRegistered"


def test_times_are_utc_with_milliseconds_and_parse_back() -> None:
    moment = dt.datetime(2026, 11, 27, 11, 15, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    text = format_time(moment)
    assert text == "2026-11-27T08:15:00.123Z"
    assert parse_time(text) == moment.replace(microsecond=123000)
