"""Fuller fetches when a consumer is busy, no added wait when it is quiet.

An aiokafka consumer asks the broker for records with ``fetch_min_bytes=1``: the broker
answers as soon as there is one record, and the consumer asks again at once. Under a steady
load of a few hundred events per second that is a fetch request for every handful of records,
each one a request encoded, a socket write that wakes the broker, a response decoded: py-spy
on the worker at 700 events/s put 8% of its busy samples in sending fetch requests alone, and
14% of the HTTP sink's. The broker pays for each request too.

:class:`FetchPacer` watches how many records the consumer gets. Above ``busy_records_per_s``
it asks the broker to hold each fetch until ``min_bytes`` are there or ``wait_ms`` have gone
by, so one fetch carries a few milliseconds of records; below it, it restores the consumer's
own settings, so a quiet consumer (a trickle of requests, the bus's main call) gets each
record as soon as it is written. The added wait is at most ``wait_ms`` per hop, and only
under load.

The settings live on aiokafka's fetcher, which reads them for every fetch request it builds
(aiokafka 0.14 ``Fetcher._fetch_min_bytes`` / ``_fetch_max_wait_ms``); the pacer changes
them there.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["BUSY_MIN_BYTES", "BUSY_RECORDS_PER_S", "BUSY_WAIT_MS", "FetchPacer"]

BUSY_RECORDS_PER_S = 400.0
"""Above this many records per second the consumer counts as busy."""
BUSY_MIN_BYTES = 256 * 1024
"""What a busy consumer's fetch waits for, at most ``BUSY_WAIT_MS``."""
BUSY_WAIT_MS = 5
WINDOW_S = 0.1
"""The rate is judged over windows of this length."""


class FetchPacer:
    """Switches an aiokafka consumer's fetch between "at once" and "a few ms at a time"."""

    def __init__(
        self,
        consumer: Any,
        *,
        busy_records_per_s: float = BUSY_RECORDS_PER_S,
        min_bytes: int = BUSY_MIN_BYTES,
        wait_ms: int = BUSY_WAIT_MS,
        window_s: float = WINDOW_S,
        clock: Any = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._busy_in_window = busy_records_per_s * window_s
        self._busy_settings = (min_bytes, wait_ms)
        self._window_s = window_s
        self._clock = clock
        self._window_began = clock()
        self._records = 0
        self._quiet_settings: tuple[int, int] | None = None  # the consumer's own
        self.busy = False

    def observe(self, records: int) -> None:
        """Count ``records`` just handed over (0 for an empty poll); at the end of each window
        switch the fetch settings if the consumer went from quiet to busy or back."""
        self._records += records
        now = self._clock()
        if now - self._window_began < self._window_s:
            return
        busy = self._records * self._window_s / (now - self._window_began) > self._busy_in_window
        self._window_began, self._records = now, 0
        if busy != self.busy:
            self._switch(busy)

    def _switch(self, busy: bool) -> None:
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is None:  # not started yet (or not aiokafka's): nothing to pace
            return
        if self._quiet_settings is None:
            self._quiet_settings = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
        min_bytes, wait_ms = self._busy_settings if busy else self._quiet_settings
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = min_bytes, wait_ms
        self.busy = busy
