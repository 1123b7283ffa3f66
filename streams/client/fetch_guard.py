"""Records the Kafka client cannot parse become rejections instead of crashing the worker.

A record header's name is a Kafka ``String`` (UTF-8), but the broker stores whatever bytes a
producer sends. aiokafka decodes names strictly while it unpacks a fetched batch, so one
record whose header name is not UTF-8 raises inside ``getmany``: Faust's consumer dies, and
after a restart it fetches the same record and dies again — a registered institution could
stop the bus by writing one such record to its own ingress topic.

:func:`install` swaps aiokafka's fetched-record unpacking for one that, when a batch fails
to unpack, reads that batch again here with names decoded leniently. Every record keeps its
offset, key and value; a record with an unreadable name gets the header
:data:`UNREADABLE_HEADER` first, which validation turns into an ``invalid-header``
rejection, and the good records around it flow on. Batches that unpack (all of them, in
practice) never reach this code.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiokafka.consumer.fetcher as fetcher
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint

from streams.contract.envelope import UNREADABLE_HEADER

_BATCH_HEADER = struct.Struct(">qi")  # base offset, batch length (after these 12 bytes)


@dataclass(frozen=True, slots=True)
class _Record:
    """One record read here; the attributes aiokafka's ``_consumer_record`` reads."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    checksum: None = None


class _KeptRecords:
    """aiokafka's ``MemoryRecords`` that also keeps the fetched bytes and its last batch."""

    __slots__ = ("_inner", "last_batch", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._inner = MemoryRecords(raw)
        self.last_batch: Any = None

    def has_next(self) -> bool:
        return bool(self._inner.has_next())

    def next_batch(self) -> Any:
        self.last_batch = self._inner.next_batch()
        return self.last_batch

    def size_in_bytes(self) -> int:
        return int(self._inner.size_in_bytes())


class GuardedPartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's ``PartitionRecords``; a batch it cannot unpack is read leniently."""

    next_fetch_offset: int

    def _unpack_records(self) -> Iterator[Any]:
        while True:
            unpacked = super()._unpack_records()
            try:
                yield from unpacked
                return
            except (UnicodeDecodeError, fetcher.Errors.CorruptRecordException) as error:
                batch = getattr(self._records, "last_batch", None)
                if batch is None or not _is_unreadable_name(error):
                    raise  # e.g. a CRC mismatch: aiokafka drops the fetch and fetches again
                for record in read_batch_leniently(
                    self._records.raw, batch.base_offset, self.next_fetch_offset, error
                ):
                    self.next_fetch_offset = record.offset + 1
                    yield self._consumer_record(self._tp, record)
                self.next_fetch_offset = max(self.next_fetch_offset, batch.next_offset)


def _is_unreadable_name(error: Exception) -> bool:
    # the C parser raises UnicodeDecodeError, the pure-Python one wraps it
    return isinstance(error, UnicodeDecodeError) or isinstance(error.__cause__, UnicodeDecodeError)


def read_batch_leniently(
    raw: bytes, base_offset: int, from_offset: int, error: Exception
) -> Iterator[_Record]:
    """The records at ``from_offset`` and after of the batch at ``base_offset`` in ``raw``.

    Header names that are not UTF-8 are shown with backslash escapes and the record is
    marked with :data:`UNREADABLE_HEADER`. If the batch itself is unreadable, each of its
    remaining offsets comes back as an empty record carrying the marker and ``error``.
    """
    batch = _DefaultRecordBatchPy(_batch_slice(raw, base_offset))
    try:
        records = list(_read_records(batch))
    except (ValueError, IndexError) as corrupt:
        detail = f"record batch at offset {base_offset} is unreadable: {error}; {corrupt}"
        for offset in range(max(from_offset, base_offset), batch.next_offset):
            yield _Record(
                offset,
                batch.first_timestamp,
                batch.timestamp_type,
                None,
                None,
                [(UNREADABLE_HEADER, detail.encode())],
            )
        return
    yield from (record for record in records if record.offset >= from_offset)


def _batch_slice(raw: bytes, base_offset: int) -> memoryview:
    view = memoryview(raw)
    pos = 0
    while pos + _BATCH_HEADER.size <= len(view):
        offset, length = _BATCH_HEADER.unpack_from(view, pos)
        end = pos + _BATCH_HEADER.size + length
        if offset == base_offset:
            return view[pos:end]
        pos = end
    raise ValueError(f"no record batch at offset {base_offset} in the fetched data")


def _read_records(batch: Any) -> Iterator[_Record]:
    """Kafka's record v2 layout, as aiokafka reads it, with lenient header names."""
    iter(batch)  # decompresses
    buffer, pos = batch._buffer, batch._pos
    log_append = batch.timestamp_type == batch.LOG_APPEND_TIME
    for _ in range(batch._num_records):
        length, pos = decode_varint(buffer, pos)
        end = pos + length
        _attributes, pos = decode_varint(buffer, pos)
        timestamp_delta, pos = decode_varint(buffer, pos)
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = _read_bytes(buffer, pos)
        value, pos = _read_bytes(buffer, pos)
        count, pos = decode_varint(buffer, pos)
        headers: list[tuple[str, bytes | None]] = []
        unreadable: list[str] = []
        for index in range(count):
            name, pos = _read_bytes(buffer, pos)
            header_value, pos = _read_bytes(buffer, pos)
            if name is None:
                raise ValueError("a header name is null")
            try:
                text = name.decode()
            except UnicodeDecodeError:
                text = name.decode(errors="backslashreplace")
                unreadable.append(f"header {index} name {text!r} is not UTF-8")
            headers.append((text, header_value))
        if pos != end:
            raise ValueError(f"record length {length} does not match its contents")
        if unreadable:
            headers.insert(0, (UNREADABLE_HEADER, "; ".join(unreadable).encode()))
        timestamp = batch.max_timestamp if log_append else batch.first_timestamp + timestamp_delta
        yield _Record(
            batch.base_offset + offset_delta, timestamp, batch.timestamp_type, key, value, headers
        )


def _read_bytes(buffer: Any, pos: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(buffer, pos)
    if size < 0:
        return None, pos
    if pos + size > len(buffer):
        raise ValueError("a field runs past the end of its record")
    return bytes(buffer[pos : pos + size]), pos + size


def install() -> None:
    """Make every aiokafka consumer in this process unpack fetched records this way."""
    fetcher.PartitionRecords = GuardedPartitionRecords
    fetcher.MemoryRecords = _KeptRecords
