"""The duplicate window: an event id read twice within the window is rejected as ``duplicate``."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from streams.contract.reasons import EventError, Reason


@dataclass
class RecentEvents:
    """Event ids seen within a time window, with where each was first read.

    The same id at the same topic/partition/offset is a re-read after a restart or rebalance
    (at-least-once), not a duplicate, and is processed again.
    """

    window: dt.timedelta = dt.timedelta(hours=24)
    max_entries: int = 1_000_000
    _seen: OrderedDict[str, tuple[tuple[str, int, int], dt.datetime]] = field(
        default_factory=OrderedDict
    )

    def check(self, event_id: str, position: tuple[str, int, int], now: dt.datetime) -> None:
        """Raise ``duplicate`` if ``event_id`` was seen elsewhere within the window."""
        while self._seen:
            oldest_id, (_, seen_at) = next(iter(self._seen.items()))
            if now - seen_at <= self.window and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest_id]
        first = self._seen.get(event_id)
        if first is None:
            self._seen[event_id] = (position, now)
        elif first[0] != position:
            topic, partition, offset = first[0]
            raise duplicate_error(f"{topic}[{partition}]@{offset}")


class SeenEvents(Protocol):
    """Where the duplicate check remembers event ids (in memory, or a Faust windowed table)."""

    def check(self, event_id: str, position: tuple[str, int, int], now: dt.datetime) -> None:
        """Raise ``duplicate`` if ``event_id`` was first read at another position."""


def duplicate_error(first: str) -> EventError:
    """The rejection for an event id first read at ``first`` (``topic[partition]@offset``)."""
    return EventError(Reason.DUPLICATE, f"event id already received at {first}")
