"""A fetched batch with a header name that is not UTF-8 unpacks record by record, none lost."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.structs import TopicPartition

from streams.client.fetch_guard import GuardedPartitionRecords, _KeptRecords
from streams.contract.envelope import UNREADABLE_HEADER
from tests.corpus.malformed import RawName

TP = TopicPartition("esb.ingress.nida", 0)
CODEC_NONE, CODEC_GZIP = 0, 1


def batch(base_offset: int, records: list[list[tuple[str, bytes]]], codec: int = 0) -> bytes:
    """One record batch (as the broker stores it) with a record per header list."""
    builder = _DefaultRecordBatchBuilderPy(
        2, codec, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0,
        batch_size=1 << 20,
    )  # fmt: skip
    for delta, headers in enumerate(records):
        builder.append(
            delta, timestamp=1_700_000_000_000 + delta, key=f"k{base_offset + delta}".encode(),
            value=f"v{base_offset + delta}".encode(), headers=headers,
        )  # fmt: skip
    data = bytearray(builder.build())
    data[0:8] = base_offset.to_bytes(8, "big")  # the broker assigns offsets; CRC excludes them
    return bytes(data)


def unpack(cls: type[Any], raw: bytes, fetch_offset: int = 0) -> list[Any]:
    records = _KeptRecords(raw)
    return list(cls(TP, records, [], fetch_offset, None, None, True, 0))


GOOD = [("ce_id", b"1")]
BAD = [("ce_id", b"2"), (RawName(b"ce_\xffsubject"), b"x"), (RawName(b"\xc0\xaf"), b"y")]


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_GZIP])
def test_every_record_comes_out_once_and_the_unreadable_one_is_marked(codec: int) -> None:
    raw = batch(0, [GOOD, GOOD, BAD, GOOD], codec) + batch(4, [GOOD, BAD], codec)

    records = unpack(GuardedPartitionRecords, raw)

    assert [r.offset for r in records] == [0, 1, 2, 3, 4, 5]
    assert [r.value for r in records] == [b"v0", b"v1", b"v2", b"v3", b"v4", b"v5"]
    assert records[1].headers == (("ce_id", b"1"),)
    assert [r.timestamp % 1000 for r in records] == [0, 1, 2, 3, 0, 1]
    name, detail = records[2].headers[0]
    assert name == UNREADABLE_HEADER
    assert detail == (
        b"header 1 name 'ce_\\\\xffsubject' is not UTF-8; "
        b"header 2 name '\\\\xc0\\\\xaf' is not UTF-8"
    )
    assert records[2].headers[1:] == (
        ("ce_id", b"2"), ("ce_\\xffsubject", b"x"), ("\\xc0\\xaf", b"y"),
    )  # fmt: skip
    assert records[5].headers[0][0] == UNREADABLE_HEADER


def test_without_the_guard_the_same_fetch_stops_the_consumer() -> None:
    raw = batch(0, [GOOD, BAD, GOOD])
    with pytest.raises((UnicodeDecodeError, CorruptRecordException)):
        unpack(PartitionRecords, raw)


def test_a_fetch_starting_inside_a_batch_skips_what_was_consumed() -> None:
    records = unpack(GuardedPartitionRecords, batch(10, [GOOD, BAD, GOOD, GOOD]), fetch_offset=12)
    assert [r.offset for r in records] == [12, 13]


def test_a_corrupted_batch_is_still_refused_for_a_fetch_again() -> None:
    raw = bytearray(batch(0, [GOOD, BAD, GOOD]))
    raw[-1] ^= 0xFF  # the CRC no longer matches: aiokafka's own check must still apply
    with pytest.raises(CorruptRecordException):
        unpack(GuardedPartitionRecords, bytes(raw))
