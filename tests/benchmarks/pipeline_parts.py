"""The parts of the pipeline bench: Kafka helpers, the delivery counter, the bare loops the
pipeline is compared with (2a: copy to three topics; 2b: the same work inline, run as child
processes by ``bench_pipeline``), and the crypto cost per operation.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeAlias

import fastavro
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient

from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID, WorkerProcess
from streams.client.consuming import assign_topics
from streams.contract import topics
from streams.contract.codec import HEADER, MAGIC, schema_id_of
from streams.contract.signing import (
    KeyRing,
    load_private_key,
    load_public_key,
    sign_event,
    verify_event,
)
from streams.pipeline.routing import minimise
from streams.registry.model import Subscription
from streams.settings import (
    REPO_ROOT,
)

DEMO_KEYS = REPO_ROOT / "deploy" / "demo-keys"
FANOUT = 3
READY_S = 60.0
CHILD_READY = "bench-pipeline-child ready"
ENVELOPE = itemgetter("ce_sigkeyid", "ce_signature", "ce_id", "ce_source", "ce_type", "ce_time")

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Output: TypeAlias = tuple[str, bytes, list[tuple[str, bytes]]]  # topic, value, headers (key kept)


class BenchError(RuntimeError):
    """The benchmark could not measure (a process did not start, deliveries did not arrive)."""


def tail_of(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- Kafka helpers ------------------------------------------------------------------------


async def end_offsets(bootstrap: str, names: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = await assign_topics(consumer, names, from_beginning=False)
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def read_range(
    bootstrap: str, start: dict[TopicPartition, int], end: dict[TopicPartition, int]
) -> list[Record]:
    """The records from ``start`` (inclusive) to ``end`` (exclusive) of each partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    records: list[Record] = []
    try:
        remaining = {tp for tp in start if end[tp] > start[tp]}
        consumer.assign(list(remaining))
        for tp in remaining:
            consumer.seek(tp, start[tp])
        async with asyncio.timeout(READY_S):
            while remaining:
                for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                    records.extend(r for r in batch if r.offset < end[tp])
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return records


def admin_call(bootstrap: str, call: str, *args: Any, **kwargs: Any) -> None:
    """One AdminClient request; waits for every future (the client must outlive them)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    for future in getattr(admin, call)(*args, **kwargs).values():
        future.result(timeout=30)


def set_group_offsets(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Give the new, empty consumer group ``group`` these committed offsets."""
    partitions = [KafkaPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
    admin_call(
        bootstrap, "alter_consumer_group_offsets", [ConsumerGroupTopicPartitions(group, partitions)]
    )


async def forget_duplicates(bootstrap: str) -> None:
    """Empty ``esb.duplicates`` (if it exists): every repetition sends the same events again,
    which the workers' shared duplicate window would reject as ``duplicate``."""
    try:
        ends = await end_offsets(bootstrap, [topics.DUPLICATES])
    except LookupError:  # no worker has run yet
        return
    partitions = [KafkaPartition(tp.topic, tp.partition, end) for tp, end in ends.items()]
    await asyncio.to_thread(admin_call, bootstrap, "delete_records", partitions)


class DeliveryCounter:
    """Counts (event id, topic) pairs of ``event_ids`` written to ``topic_names`` from now on."""

    def __init__(self, bootstrap: str, topic_names: list[str], event_ids: set[bytes]) -> None:
        self._bootstrap = bootstrap
        self._topics = topic_names
        self._ids = event_ids
        self.expected = FANOUT * len(event_ids)
        self.seen: set[tuple[bytes, str]] = set()
        self.first_at: float | None = None
        self.done_at: float | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DeliveryCounter:
        """Position at the current ends (resolved now, not lazily), then count in the back."""
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, fetch_max_wait_ms=50
        )
        await self._consumer.start()
        partitions = await assign_topics(self._consumer, self._topics, from_beginning=False)
        for tp, offset in (await self._consumer.end_offsets(partitions)).items():
            self._consumer.seek(tp, offset)
        self._task = asyncio.create_task(self._count())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _count(self) -> None:
        assert self._consumer is not None
        while len(self.seen) < self.expected:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.monotonic()
            for tp, records in batches.items():
                for record in records:
                    event_id = next((v for k, v in record.headers if k == "ce_id"), None)
                    if event_id in self._ids:
                        self.first_at = self.first_at or now
                        self.seen.add((event_id, tp.topic))
        self.done_at = time.monotonic()

    async def rate(self, ready_at: float, what: str, logs: list[Path]) -> float:
        """Events/s from ``ready_at`` (or the first delivery, if earlier) to the last delivery.

        Raises:
            BenchError: not every delivery arrived within 120 s plus 10 ms per delivery.
        """
        assert self._task is not None
        bound = 120.0 + self.expected / 100
        try:
            await asyncio.wait_for(asyncio.shield(self._task), bound)
        except TimeoutError:
            tails = "\n".join(f"--- {path}\n{tail_of(path)}" for path in logs)
            raise BenchError(
                f"{what}: only {len(self.seen)} of {self.expected} deliveries arrived within "
                f"{bound:.0f} s\n{tails}"
            ) from None
        assert self.done_at is not None
        started = min(ready_at, self.first_at or ready_at)
        return len(self._ids) / (self.done_at - started)


# --- the child loops (2a and 2b) ----------------------------------------------------------


class SameWork:
    """The pipeline's work on one valid event, inline: decode, verify, then per agreement
    minimise, encode, sign. No envelope checks, routing filters, duplicate window or audit."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.writers = {
            int(sid): fastavro.parse_schema(json.loads(text))
            for sid, text in config["writers"].items()
        }
        self.routes = {
            event_type: [
                (
                    Subscription.model_validate(route["subscription"]),
                    HEADER.pack(MAGIC, route["schema_id"]),
                    fastavro.parse_schema(route["schema"]),
                    route["topic"],
                )
                for route in routes
            ]
            for event_type, routes in config["routes"].items()
        }
        self.keyring = KeyRing()
        for key_id, public_key in config["keys"].items():
            self.keyring.add(key_id, load_public_key(public_key))
        self.bus_key = load_private_key(DEMO_BUS_KEY.read_bytes())

    def __call__(self, record: Record) -> list[Output]:
        key_id, signature, event_id, source, event_type, time_ = ENVELOPE(
            {k: v.decode() for k, v in record.headers}
        )
        body = io.BytesIO(record.value)
        body.seek(HEADER.size)
        writer = self.writers[schema_id_of(record.value)]
        payload: dict[str, Any] = fastavro.schemaless_reader(body, writer, None)  # type: ignore[assignment]
        verify_event(self.keyring, key_id, signature, event_id, source, event_type, time_,
                     record.value)  # fmt: skip
        kept = [(k, v) for k, v in record.headers if k not in ("ce_sigkeyid", "ce_signature")]
        outputs = []
        for subscription, header, parsed, topic in self.routes[event_type]:
            out = io.BytesIO()
            out.write(header)
            fastavro.schemaless_writer(out, parsed, minimise(payload, subscription))
            value = out.getvalue()
            bus_signature = sign_event(self.bus_key, event_id, source, event_type, time_, value)
            headers = [
                *kept,
                ("ce_sigkeyid", DEMO_BUS_KEY_ID.encode()),
                ("ce_signature", bus_signature.encode()),
                ("esb_subscription", subscription.id.encode()),
            ]
            outputs.append((topic, value, headers))
        return outputs


async def child_loop(config: dict[str, Any]) -> None:
    """Consume from the group's committed offsets, produce, commit; until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    work: Callable[[Record], list[Output]]
    if config["mode"] == "work":
        work = SameWork(config)
    else:

        def work(record: Record) -> list[Output]:
            return [(topic, record.value, list(record.headers)) for topic in config["copy_topics"]]

    consumer = AIOKafkaConsumer(
        *config["ingress"],
        bootstrap_servers=config["bootstrap"],
        group_id=config["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=config["bootstrap"], acks="all", enable_idempotence=True, linger_ms=2
    )
    await producer.start()
    await consumer.start()
    try:
        async with asyncio.timeout(READY_S):
            while not consumer.assignment():  # noqa: ASYNC110 - the group join runs in the back
                await asyncio.sleep(0.05)
        print(CHILD_READY, flush=True)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            sent = [
                await producer.send(topic, value, key=record.key, headers=headers)
                for records in batches.values()
                for record in records
                for topic, value, headers in work(record)
            ]
            if sent:
                await asyncio.gather(*sent)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


# --- the benchmark ------------------------------------------------------------------------

# --- reporting ----------------------------------------------------------------------------


def profile_location(path: str, line: int, name: str) -> str:
    """A cProfile location, short: package-relative or repository-relative."""
    if path == "~":
        return name
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(str(REPO_ROOT)):
        path = str(Path(path).relative_to(REPO_ROOT))
    else:
        path = Path(path).name
    return f"{path}:{line}({name})"


def events_handled(worker: WorkerProcess) -> int:
    """The worker's govesb_pipeline_events_total, summed: it should have read just the batch."""
    try:
        text = worker.metrics()
    except OSError:
        return -1
    lines = text.splitlines()
    prefix = "govesb_pipeline_events_total{"
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)))


def per_op_us() -> dict[str, dict[str, float]]:
    """Microseconds per sign and per verify on each curve (canonical bytes included)."""
    out = {}
    for name in ("ega", "tra"):  # secp256k1, P-256
        key = load_private_key((DEMO_KEYS / f"{name}.key.pem").read_bytes())
        ring = KeyRing()
        ring.add("k", key.public_key())
        rounds, value = 500, b"\0" * 200
        started = time.perf_counter()
        signatures = [sign_event(key, "id", "src", "type", "time", value) for _ in range(rounds)]
        signed = time.perf_counter()
        for signature in signatures:
            verify_event(ring, "k", signature, "id", "src", "type", "time", value)
        verified = time.perf_counter()
        sign_us, verify_us = 1e6 * (signed - started) / rounds, 1e6 * (verified - signed) / rounds
        out[key.curve] = {
            "sign_us": round(sign_us, 1),
            "verify_us": round(verify_us, 1),
            "events_per_s_if_bus_key_too": round(1e6 / (verify_us + FANOUT * sign_us)),
        }
    return out
