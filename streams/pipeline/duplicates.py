"""The duplicate window: an event read twice within the window is rejected as ``duplicate``.

An event is identified by its source and id (CloudEvents makes that pair unique). The window
remembers, for each event it accepted, where the event was first read (topic, partition,
offset): the same event at the same position is a re-read after a restart or a rebalance
(at-least-once) and is processed again; the same event anywhere else is a duplicate.

Memory is what bounds a window, so each event costs a fixed 16 bytes in flat arrays (an 8-byte
digest of source and id, 8 bytes of partition and offset) at a load of at most 3/4: 21.3 bytes
an event (``BYTES_PER_EVENT``). The window is kept as ``generations`` open-addressing tables,
each covering an equal slice of the window; when the newest slice has lasted its time, or its
table is full, the oldest table is dropped whole and an empty one starts. So a lookup costs a
few array reads, no entry ever has to be found to expire, and the window reaches back between
``(generations - 1) / generations`` of its length and all of it — or less, when more events
arrive than ``max_ids`` allows (``reach_s`` says how far it reaches now). Tables are anonymous
memory maps whose pages are committed as they are first written: a few thousand events take a
few MB, and a table is all committed after a few hundred thousand (events land anywhere).

A digest collision makes two different events look alike with probability about n / 2**64
per lookup (1 in 200 billion with 86 million events held: a full day at 1,000 events/s).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import mmap
import sys
from array import array
from dataclasses import dataclass, field
from typing import Protocol

from streams.contract.reasons import EventError, Reason

_MAX_LOAD = 0.75
BYTES_PER_EVENT = 16 / _MAX_LOAD
"""Memory per remembered event: 16 bytes a slot, tables at most 3/4 full."""

_OFFSET_BITS = 48


def event_digest(source: str, event_id: str) -> int:
    """The non-zero 64-bit digest that identifies ``(source, id)`` in the window."""
    digest = hashlib.blake2b(f"{source}\x00{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def pack_position(partition: int, offset: int) -> int:
    """Partition and offset in one 64-bit value (offsets below 2**48)."""
    return (partition << _OFFSET_BITS) | (offset & ((1 << _OFFSET_BITS) - 1))


def unpack_position(packed: int) -> tuple[int, int]:
    """The partition and offset of ``pack_position``."""
    return packed >> _OFFSET_BITS, packed & ((1 << _OFFSET_BITS) - 1)


class _Table:
    """A fixed-size open-addressing map of 64-bit digests to packed positions (key 0 = empty)."""

    __slots__ = ("_memory", "_view", "count", "keys", "positions", "slots", "started_s")

    def __init__(self, capacity: int, started_s: float) -> None:
        self.slots = max(16, int(capacity / _MAX_LOAD) + 1)
        self._memory = mmap.mmap(-1, 16 * self.slots)  # zero pages, committed when written
        self._view = memoryview(self._memory)
        self.keys = self._view[: 8 * self.slots].cast("Q")
        self.positions = self._view[8 * self.slots :].cast("Q")
        self.count = 0
        self.started_s = started_s

    @property
    def full(self) -> bool:
        return self.count >= _MAX_LOAD * self.slots

    def get(self, key: int) -> int:
        """The packed position stored for ``key``, or -1."""
        keys, slots = self.keys, self.slots
        slot = key % slots
        while True:
            found = keys[slot]
            if found == key:
                return int(self.positions[slot])
            if found == 0:
                return -1
            slot = slot + 1 if slot + 1 < slots else 0

    def put(self, key: int, position: int) -> None:
        """Store ``key`` with ``position`` (a key already held keeps its first position)."""
        keys, slots = self.keys, self.slots
        slot = key % slots
        while (found := keys[slot]) != 0:
            if found == key:
                return
            slot = slot + 1 if slot + 1 < slots else 0
        keys[slot] = key
        self.positions[slot] = position
        self.count += 1

    def release(self) -> None:
        """Give the memory back."""
        self.keys.release()
        self.positions.release()
        self._view.release()
        self._memory.close()


@dataclass
class DuplicateWindow:
    """Events accepted within ``window``, by (source, id), with where each was first read.

    What was accepted since the last ``drain_accepted`` is kept aside too, so that the worker
    can write it to the bus (``esb.duplicates``) and every worker, after a restart too, can
    ``remember`` it.
    """

    window: dt.timedelta = dt.timedelta(hours=24)
    max_ids: int = 25_000_000
    generations: int = 4
    _tables: list[_Table] = field(default_factory=list)
    _accepted: array[int] = field(default_factory=lambda: array("Q"))

    @property
    def slice_s(self) -> float:
        """How long one table takes new events."""
        return self.window.total_seconds() / self.generations

    def _newest(self, now_s: float) -> _Table:
        if self._tables:
            newest = self._tables[-1]
            if now_s - newest.started_s < self.slice_s and not newest.full:
                return newest
        self._tables.append(_Table(max(1, self.max_ids // self.generations), now_s))
        for dropped in self._tables[: -self.generations]:
            dropped.release()
        del self._tables[: -self.generations]
        return self._tables[-1]

    def _live(self, now_s: float) -> list[_Table]:
        """The tables that began inside the window, newest first: all their events are in it."""
        begins = now_s - self.window.total_seconds()
        return [table for table in reversed(self._tables) if table.started_s >= begins]

    def check(
        self, source: str, event_id: str, position: tuple[str, int, int], now: dt.datetime
    ) -> None:
        """Raise ``duplicate`` if the event was accepted at another position in the window;
        otherwise remember it (a re-read at the same position is processed again)."""
        key = event_digest(source, event_id)
        topic, partition, offset = position
        here = pack_position(partition, offset)
        now_s = now.timestamp()
        for table in self._live(now_s):
            first = table.get(key)
            if first >= 0:
                if first != here:
                    raise duplicate_error(topic, *unpack_position(first))
                return
        self._newest(now_s).put(key, here)
        self._accepted.append(key)
        self._accepted.append(here)

    def remember(self, entries: list[tuple[int, int]], at: dt.datetime) -> None:
        """Add events accepted at ``at`` by another worker, or by this one before a restart."""
        at_s = at.timestamp()
        for key, position in entries:
            if all(table.get(key) < 0 for table in self._live(at_s)):
                self._newest(at_s).put(key, position)

    def drain_accepted(self) -> bytes:
        """What was accepted since the last call, as ``encode_entries`` bytes (b"" if none)."""
        if not self._accepted:
            return b""
        accepted, self._accepted = self._accepted, array("Q")
        return encode_entries(accepted)

    def reach_s(self, now: dt.datetime) -> float:
        """How far back the window reaches now, in seconds (at most its length)."""
        live = self._live(now.timestamp())
        if not live:
            return 0.0
        return min(self.window.total_seconds(), now.timestamp() - live[-1].started_s)

    @property
    def size(self) -> int:
        """Events held."""
        return sum(table.count for table in self._tables)


def encode_entries(pairs: array[int]) -> bytes:
    """Alternating keys and packed positions as bytes: 16 bytes an event, little-endian."""
    if pairs.itemsize != 8 or len(pairs) % 2:
        raise ValueError("expected 8-byte keys and positions, in pairs")
    if sys.byteorder != "little":
        pairs = array("Q", pairs)
        pairs.byteswap()
    return pairs.tobytes()


def decode_entries(packed: bytes) -> list[tuple[int, int]]:
    """The (key, packed position) pairs of ``encode_entries`` bytes; ValueError if malformed."""
    if len(packed) % 16:
        raise ValueError(f"{len(packed)} bytes are not whole 16-byte entries")
    values = array("Q")
    values.frombytes(packed)
    if sys.byteorder != "little":
        values.byteswap()
    return list(zip(values[0::2], values[1::2], strict=True))


class SeenEvents(Protocol):
    """Where the duplicate check remembers events."""

    def check(
        self, source: str, event_id: str, position: tuple[str, int, int], now: dt.datetime
    ) -> None:
        """Raise ``duplicate`` if the event was first read at another position."""


def duplicate_error(topic: str, partition: int, offset: int) -> EventError:
    """The rejection for an event first read at ``topic[partition]@offset``."""
    return EventError(
        Reason.DUPLICATE, f"event id already received at {topic}[{partition}]@{offset}"
    )
