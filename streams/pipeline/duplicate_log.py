"""The duplicate window on the bus: ``esb.duplicates``, so it survives restarts and rebalances.

Every second (``FLUSH_S``) a worker writes what its window accepted since the last write as one
record (16 bytes an event: ``duplicates.encode_entries``), keyed by the worker's instance id.
Every worker reads the topic: on start from the beginning of the window, before it handles
its first event (so a re-send after a restart is a ``duplicate``), and then follows it, so an
event another worker accepted is known here too when its partition moves to this worker. The
topic keeps its records a little longer than the window (``retention.ms``), so reading it whole
is reading the window.

Between a worker's write and another worker's read lies about a second: a re-send of an event
within that second, on a partition another worker holds, is not recognised.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.client.consuming import assign_whole_topic
from streams.contract import topics
from streams.pipeline.duplicates import DuplicateWindow, decode_entries
from streams.registry.sync import ensure_topics
from streams.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)

FLUSH_S = 1.0
"""How often a worker writes what its window accepted."""


class DuplicateLog:
    """Writes ``window``'s accepted events to ``esb.duplicates`` and reads everyone's back."""

    LOAD_TIMEOUT_S = 600.0

    def __init__(
        self, window: DuplicateWindow, kafka: KafkaSettings, instance: str,
        *, topic: str = topics.DUPLICATES,
    ) -> None:  # fmt: skip
        self.window = window
        self.instance = instance.encode()
        self.topic = topic
        self._kafka = kafka
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.restored = 0
        self.error: str | None = None
        self.last_write_failed: str | None = None

    async def start(self) -> None:
        """Read the window's events from the topic, then follow it and write every second.

        A missing topic is reported in ``error`` (and ``/health``); the worker runs on with a
        window that does not survive a restart. The log has a producer of its own: one write
        a second, independent of the worker's output producer.
        """
        producer = AIOKafkaProducer(**self._kafka.durable_producer_options(linger_ms=5))
        await producer.start()
        self._producer = producer
        consumer = AIOKafkaConsumer(
            **self._kafka.aiokafka_options(), enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        self._consumer = consumer
        started = time.monotonic()
        try:
            await self._create_if_missing()
            assigned = await assign_whole_topic(consumer, self.topic)
            end = await consumer.end_offsets(assigned)
            await asyncio.wait_for(self._read_until(consumer, end), self.LOAD_TIMEOUT_S)
        except (LookupError, KafkaError, TimeoutError) as error:
            self.error = f"{self.topic}: {error or type(error).__name__}"
            log.error("duplicate window not restored (%s): run `govesb registry apply`", self.error)
            await consumer.stop()
            self._consumer = None
        else:
            log.info("duplicate window: %d events restored from %s in %.1fs",
                     self.restored, self.topic, time.monotonic() - started)  # fmt: skip
            self._tasks.append(asyncio.create_task(self._follow(consumer), name="duplicates-in"))
        self._tasks.append(asyncio.create_task(self._write_every(producer), name="duplicates-out"))

    async def _create_if_missing(self) -> None:
        """``govesb registry apply`` creates the topic; a worker where it is missing (a DR site
        before its first apply) creates it itself where its credentials allow."""
        spec = next(s for s in topics.shared_topics(TopicSettings()) if s.name == self.topic)
        try:
            if await ensure_topics(self._kafka, [spec], TopicSettings()):
                log.info("created %s (the duplicate window's events)", self.topic)
        except KafkaError as error:
            log.warning("cannot create %s (%s)", self.topic, type(error).__name__)

    async def _read_until(self, consumer: AIOKafkaConsumer, end: dict[Any, int]) -> None:
        for partition, offset in end.items():
            while await consumer.position(partition) < offset:
                await self._poll(consumer, 500, restoring=True)

    async def _poll(self, consumer: AIOKafkaConsumer, timeout_ms: int, *, restoring: bool) -> None:
        batches = await consumer.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            for record in records:
                if record.value is None or (record.key == self.instance and not restoring):
                    continue  # this worker's own writes are in its window already
                try:
                    entries = decode_entries(record.value)
                except ValueError as error:
                    log.warning("%s@%d: unreadable record skipped (%s)",
                                self.topic, record.offset, error)  # fmt: skip
                    continue
                at = dt.datetime.fromtimestamp(record.timestamp / 1000, dt.UTC)
                self.window.remember(entries, at)
                self.restored += len(entries) if restoring else 0

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self._poll(consumer, 1000, restoring=False)
            except asyncio.CancelledError:
                raise
            except Exception:  # the consumer reconnects by itself
                log.exception("%s: reading failed; retrying", self.topic)
                await asyncio.sleep(1)

    async def write(self, producer: AIOKafkaProducer) -> None:
        """Write what the window accepted since the last write (nothing if nothing)."""
        packed = self.window.drain_accepted()
        if not packed:
            return
        try:
            await producer.send_and_wait(self.topic, packed, key=self.instance)
            self.last_write_failed = None
        except KafkaError as error:
            # Lost entries only weaken the check after a restart; the events are not lost.
            self.last_write_failed = f"{type(error).__name__}: {error}"
            log.warning("cannot write %d duplicate-window entries to %s (%s)",
                        len(packed) // 16, self.topic, error)  # fmt: skip

    async def _write_every(self, producer: AIOKafkaProducer) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.write(producer)

    def health(self) -> dict[str, Any]:
        """For ``/health``: restored, followed, written."""
        # Without the topic the window still works, for this run only: say so, stay up.
        check: dict[str, Any] = {
            "ok": True,
            "persisted": self.error is None and self.last_write_failed is None,
            "held": self.window.size,
            "restored": self.restored,
        }
        check["reach_s"] = round(self.window.reach_s(dt.datetime.now(dt.UTC)), 1)
        if self.error or self.last_write_failed:
            check["error"] = self.error or self.last_write_failed
        return check

    async def stop(self) -> None:
        """Stop following; write what is left."""
        producer, self._producer = self._producer, None
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if producer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.write(producer), 5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(producer.stop(), 5)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
