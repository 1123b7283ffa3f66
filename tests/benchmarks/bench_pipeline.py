"""Pipeline throughput: a real ``govesb worker`` against bare aiokafka loops on the same events.

    python -m tests.benchmarks.bench_pipeline [--events N] [--repeat R]

Setup, once: the catalogue schemas are registered and a registry derived from
``deploy/registry.example.yaml`` is applied (every agreement delivered over Kafka; three
agreements each on ``tz.go.rita.DeathRegistered`` and ``tz.go.tra.TaxpayerRegistered``). N
events of each type are published with the Publisher SDK: RITA signs with secp256k1, TRA with
P-256, so the pipeline verifies both curves; the bus re-signs deliveries with its secp256k1 key.

Each repetition runs every side on the same 2N ingress records, read by a fresh consumer group
whose offsets are set to the start of the batch, and times it from "ready" (or the first
delivery, if earlier) until all 6N deliveries are on the output topics, as counted by a
group-less consumer:

- the pipeline: one ``govesb worker`` process;
- 2a, framework cost: a bare aiokafka loop in a child process that writes each record,
  unchanged, to three topics (acks=all, idempotent producer, commit after each batch);
- 2b, the same work without the framework: a child loop that decodes, verifies, minimises,
  re-encodes and re-signs per agreement, and writes the three deliveries;
- ``Pipeline.handle`` in this process over 2,000 of the records (no Kafka at all);
- the crypto ceiling: 1 verify + 3 bus signatures per event on one core, per publisher curve.

Then, per repetition, scaling: one worker, two workers in one group, and one
``govesb worker --processes 2``, the batch written to the ingress topics again once every
worker process holds its partitions (a worker joining a group that is already working would
put a rebalance inside the timing). Meanwhile the CPU of the worker processes, the broker (when
the bench started it) and the bench process itself (the replaying producer and the delivery
counter) is sampled from ``/proc``: ``extra["cpu_cores_used"]``, in cores (2.0 = both cores of
a 2-core machine). ``--scaling-only`` (``--only scaling`` of ``python -m tests.benchmarks``)
runs the replays alone. ``Pipeline.handle`` also runs once
under cProfile; the top functions by own time go to ``extra["profile"]``.

At the end the bench topics and groups are deleted and the example registry is applied again.
Prints the profile and the table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer, TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from deploy.kafka.launcher import die_with_parent
from deploy.worker import (
    DEMO_BUS_KEY,
    DEMO_BUS_KEY_ID,
    WorkerProcess,
    start_worker,
    worker_processes,
)
from streams.audit.chain import AuditChain
from streams.client.publisher import Publisher
from streams.contract import topics
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore, WriterSchema, schema_id_of
from streams.contract.jsonavro import from_json
from streams.contract.signing import (
    KeyRing,
    PrivateKey,
    load_private_key,
    load_public_key,
    sign_event,
    verify_event,
)
from streams.pipeline.process import BusKey, Pipeline
from streams.pipeline.routing import delivery_name, delivery_schema
from streams.pipeline.validation import IngressRecord
from streams.registry.governance import register_catalog
from streams.registry.model import BusRegistry, Subscription, load_registry
from streams.registry.sync import RegistryView, apply_registry
from streams.settings import (
    DEFAULT_CATALOG,
    REPO_ROOT,
    KafkaSettings,
    SchemaRegistrySettings,
    TopicSettings,
)
from tests.benchmarks.common import (
    BenchBus,
    CpuSample,
    Figure,
    Section,
    bench_bus,
    cli_has_option,
    print_section,
    ratios,
)
from tests.benchmarks.pipeline_parts import (
    CHILD_READY,
    DEMO_KEYS,
    ENVELOPE,
    FANOUT,
    READY_S,
    BenchError,
    DeliveryCounter,
    Record,
    admin_call,
    child_loop,
    end_offsets,
    events_handled,
    forget_duplicates,
    per_op_us,
    profile_location,
    read_range,
    set_group_offsets,
    tail_of,
)

MODULE = "tests.benchmarks.bench_pipeline"
EVENTS = 5000  # per publisher curve
EXAMPLE_REGISTRY = REPO_ROOT / "deploy" / "registry.example.yaml"
IN_PROCESS_RECORDS = 2000  # Pipeline.handle, cProfile, and the crypto ceiling per curve
PROFILE_TOP = 12
# One type per publisher curve, each with exactly three Kafka agreements.
BATCH_TYPES = ("tz.go.rita.DeathRegistered", "tz.go.tra.TaxpayerRegistered")
EXTRA_SUBSCRIPTIONS: list[dict[str, Any]] = [
    {
        "id": "tra-deaths",
        "subscriber": "tra",
        "purpose": "Benchmark: close the tax accounts of deceased individuals.",
        "event_types": ["tz.go.rita.DeathRegistered"],
        "fields": ["entryNumber", "deceasedNin", "firstName", "lastName", "dateOfDeath"],
        "filter": [{"field": "deceasedNin", "op": "exists"}],
    },
    {
        "id": "nida-taxpayers",
        "subscriber": "nida",
        "purpose": "Benchmark: link TINs to NINs.",
        "event_types": ["tz.go.tra.TaxpayerRegistered"],
        "fields": ["tin", "taxpayerType", "taxpayerName", "nin", "effectiveDate"],
    },
    {
        "id": "brela-taxpayers",
        "subscriber": "brela",
        "purpose": "Benchmark: record the TIN of registered companies.",
        "event_types": ["tz.go.tra.TaxpayerRegistered"],
        "fields": ["tin", "taxpayerName", "companyRegistrationNumber", "taxRegion", "registeredAt"],
    },
    {
        "id": "utumishi-taxpayers",
        "subscriber": "utumishi",
        "purpose": "Benchmark: payroll checks of public servants' TINs.",
        "event_types": ["tz.go.tra.TaxpayerRegistered"],
        "fields": ["tin", "taxpayerName", "nin", "phoneNumber", "taxOffice"],
        "mask": ["phoneNumber"],
    },
]


@dataclass
class Batch:
    """One publisher's events: the type, the curve it signs with, its three agreements."""

    event_type: str
    publisher: str
    key_id: str
    curve: str
    subscriptions: list[Subscription]
    event_ids: list[str] = field(default_factory=list)


@dataclass
class PipelineBench:
    """What the setup made, shared by the repetitions; one method per side."""

    bootstrap: str
    registry_url: str
    workdir: Path
    batches: list[Batch]
    ingress: list[str]  # every institution's ingress topic: what a worker consumes
    batch_start: dict[TopicPartition, int]
    records: list[Record]
    child_config: dict[str, Any]
    pipeline: Pipeline
    bus_key: PrivateKey
    keyring: KeyRing
    bench_topics: list[str]
    groups: list[str] = field(default_factory=list)
    worker_events: list[int] = field(default_factory=list)
    assignments: list[list[int]] = field(default_factory=list)
    broker_pid: int | None = None
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))
    phase_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def event_ids(self) -> set[bytes]:
        return {event_id.encode() for b in self.batches for event_id in b.event_ids}

    async def new_group(self, side: str, *, at_batch: bool) -> str:
        """A fresh group whose offsets are the batch's start (``at_batch``) or the ends."""
        group = f"bench-pipeline-{side}-{uuid.uuid4().hex[:8]}"
        self.groups.append(group)
        offsets = await end_offsets(self.bootstrap, self.ingress)
        if at_batch:
            offsets.update(self.batch_start)
        await asyncio.to_thread(set_group_offsets, self.bootstrap, group, offsets)
        return group

    async def child_side(self, mode: str) -> float:
        """2a (``copy``) or 2b (``work``): a bare loop in a child process; events/s."""
        began = time.monotonic()
        group = await self.new_group(mode, at_batch=True)
        config = {**self.child_config, "mode": mode, "group": group}
        outputs = config["copy_topics"] if mode == "copy" else config["work_topics"]
        config_path, log_path = self.workdir / f"{group}.json", self.workdir / f"{group}.log"
        config_path.write_text(json.dumps(config))
        child = None
        try:
            async with DeliveryCounter(self.bootstrap, outputs, self.event_ids) as counter:
                with log_path.open("wb") as log:
                    child = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", MODULE, "--child", str(config_path),
                        stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPO_ROOT,
                        preexec_fn=die_with_parent,
                    )  # fmt: skip
                assert child.stdout is not None
                try:
                    async with asyncio.timeout(READY_S):
                        while (await child.stdout.readline()).decode().strip() != CHILD_READY:
                            if child.stdout.at_eof():
                                raise BenchError(f"{mode} loop exited:\n{tail_of(log_path)}")
                except TimeoutError:
                    raise BenchError(f"{mode} loop not ready in {READY_S:.0f} s") from None
                return await counter.rate(time.monotonic(), f"{mode} loop", [log_path])
        finally:
            if child is not None and child.returncode is None:
                child.terminate()
                try:
                    await asyncio.wait_for(child.wait(), 15)
                except TimeoutError:
                    child.kill()
                    await child.wait()
            self.phase_s[mode] += time.monotonic() - began

    async def worker_side(self, workers: int, *, replay: bool, processes: int = 1) -> float:
        """Events/s of ``workers`` ``govesb worker [--processes N]`` commands sharing one group.

        Without ``replay`` they read the published batch from its start; with ``replay`` the
        group starts at the ends and the batch is written again once every worker process
        holds its share of the partitions. The CPU that the worker processes, the broker and
        this process (the replaying producer and the delivery counter) use meanwhile goes to
        :attr:`cpu`.
        """
        began = time.monotonic()
        side = (f"{workers} worker(s)" + (f" x {processes} processes" if processes > 1 else "")
                + (", replay" if replay else ""))  # fmt: skip
        await forget_duplicates(self.bootstrap)
        group = await self.new_group(f"worker{workers}x{processes}", at_batch=not replay)
        subscribers = {s.subscriber for b in self.batches for s in b.subscriptions}
        deliver = sorted(topics.deliver(s) for s in subscribers)
        logs = [self.workdir / f"{group}-{n}.log" for n in range(workers)]
        commands: list[WorkerProcess] = []
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        try:
            async with DeliveryCounter(self.bootstrap, deliver, self.event_ids) as counter:
                results = await asyncio.gather(
                    *(asyncio.to_thread(start_worker, self.bootstrap, self.registry_url, log,
                                        app_id=group, processes=processes) for log in logs),
                    return_exceptions=True,
                )  # fmt: skip
                commands = [r for r in results if isinstance(r, WorkerProcess)]
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise BenchError(f"a worker did not start: {errors[0]}")
                started = [p for c in commands for p in worker_processes(c, processes)]
                if replay:
                    self.assignments.append(await self._settled(started))
                cpu = CpuSample({
                    "worker_processes": await self._pids(started),
                    "broker": [self.broker_pid] if self.broker_pid else [],
                    "bench_producer_and_counter": [os.getpid()],
                })  # fmt: skip
                cpu.start()
                ready_at = time.monotonic()
                if replay:
                    for r in self.records:
                        await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers),
                                            partition=r.partition)  # fmt: skip
                rate = await counter.rate(ready_at, side, logs)
                self.cpu[side].append(cpu.stop())
                self.worker_events.append(sum(events_handled(w) for w in started))
                return rate
        finally:
            await producer.stop()
            await asyncio.gather(*(asyncio.to_thread(c.stop) for c in commands))
            self.phase_s[side] += time.monotonic() - began

    @staticmethod
    async def _pids(workers: list[WorkerProcess]) -> list[int]:
        """The pid of each worker process, as its /health tells it (a worker without a
        ``process`` check, of an older tree, is a single process: the command's own)."""
        bodies = await asyncio.gather(*(asyncio.to_thread(w.health) for w in workers))
        return [
            int(body["checks"]["process"]["pid"]) if "process" in body["checks"] else w.process.pid
            for w, body in zip(workers, bodies, strict=True)
            if body
        ]

    async def _settled(self, workers: list[WorkerProcess]) -> list[int]:
        """Partitions per worker, once each holds some and together all, two polls running."""
        total = len(await end_offsets(self.bootstrap, self.ingress))
        stable, assigned = 0, [0] * len(workers)
        try:
            async with asyncio.timeout(READY_S):
                while stable < 2:
                    bodies = await asyncio.gather(*(asyncio.to_thread(w.health) for w in workers))
                    assigned = [
                        (body or {}).get("checks", {}).get("partitions", {}).get("assigned", 0)
                        for body in bodies
                    ]
                    stable = stable + 1 if all(assigned) and sum(assigned) >= total else 0
                    await asyncio.sleep(0.5)
        except TimeoutError:
            raise BenchError(
                f"workers did not settle on the {total} ingress partitions: {assigned}"
            ) from None
        return assigned

    def in_process_records(self) -> list[IngressRecord]:
        """IN_PROCESS_RECORDS records, half from each batch."""
        share = IN_PROCESS_RECORDS // len(self.batches)
        by_topic: dict[str, list[IngressRecord]] = defaultdict(list)
        for r in self.records:
            if len(by_topic[r.topic]) < share:
                by_topic[r.topic].append(
                    IngressRecord(r.topic, r.partition, r.offset, r.key, r.value,
                                  tuple(r.headers), r.timestamp)
                )  # fmt: skip
        return [record for records in by_topic.values() for record in records]

    async def check_handle(self, records: list[IngressRecord]) -> None:
        """Every record is routed to three agreements (and the caches are warm after)."""
        for record in records:
            outcome = await self.pipeline.handle(record)
            if outcome.reason is not None or len(outcome.subscribers) != FANOUT:
                raise BenchError(f"Pipeline.handle: {outcome.reason} {outcome.subscribers}")

    async def handle_rate(self, records: list[IngressRecord]) -> float:
        started = time.perf_counter()
        for record in records:
            await self.pipeline.handle(record)
        return len(records) / (time.perf_counter() - started)

    async def profile(self, records: list[IngressRecord]) -> list[dict[str, Any]]:
        """The top functions of ``Pipeline.handle`` by own time."""
        profiler = cProfile.Profile()
        profiler.enable()
        for record in records:
            await self.pipeline.handle(record)
        profiler.disable()
        stats: Any = pstats.Stats(profiler)
        rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)
        return [
            {
                "function": profile_location(*where),
                "calls": calls,
                "tottime_s": round(own, 4),
                "share_pct": round(100 * own / stats.total_tt, 1),
            }
            for where, (_, calls, own, _, _) in rows[:PROFILE_TOP]
        ]

    def crypto_ceiling(self, records: list[IngressRecord], event_type: str) -> float:
        """Events/s of 1 publisher verify + 3 bus signatures, on this core only."""
        signed = [
            (ENVELOPE({k: v.decode() for k, v in r.headers}), r.value or b"") for r in records
        ]
        signed = [(envelope, value) for envelope, value in signed if envelope[4] == event_type]
        started = time.perf_counter()
        for (key_id, signature, event_id, source, type_, time_), value in signed:
            verify_event(self.keyring, key_id, signature, event_id, source, type_, time_, value)
            for _ in range(FANOUT):
                sign_event(self.bus_key, event_id, source, type_, time_, value)
        return len(signed) / (time.perf_counter() - started)


def _bench_registry(workdir: Path) -> BusRegistry:
    """The example registry, every agreement over Kafka, plus the bench's agreements."""
    document = yaml.safe_load(EXAMPLE_REGISTRY.read_text())
    document["catalog"] = str(DEFAULT_CATALOG)
    for subscription in document["subscriptions"]:
        subscription["delivery"] = "kafka"
    document["subscriptions"].extend(EXTRA_SUBSCRIPTIONS)
    path = workdir / "registry.bench.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    registry, problems = load_registry(path)
    if registry is None:
        raise BenchError(f"the bench registry does not lint: {problems}")
    return registry


async def _publish(bus: BenchBus, catalog: Catalog, batch: Batch, count: int) -> None:
    """``count`` events with the Publisher SDK, 500 in flight at a time; varied keys."""
    entry = catalog.get(batch.event_type)
    assert entry is not None
    samples = yaml.safe_load((DEFAULT_CATALOG.parent / "samples.yaml").read_text())
    base = from_json(entry.schema, samples[batch.event_type])
    run = uuid.uuid4().int % 1000
    payloads = [{**base, entry.key: f"{run:03d}{n:07d}"} for n in range(count)]
    publisher = Publisher.connect(
        institution=batch.publisher,
        system="bench",
        key_id=batch.key_id,
        key=load_private_key((DEMO_KEYS / f"{batch.publisher}.key.pem").read_bytes()),
        kafka=KafkaSettings(bootstrap_servers=bus.bootstrap),
        schema_registry=SchemaRegistrySettings(url=bus.registry_url),
        catalog=catalog,
    )
    async with publisher:
        for start in range(0, count, 500):
            chunk = payloads[start : start + 500]
            batch.event_ids += await asyncio.gather(
                *(publisher.publish(batch.event_type, payload) for payload in chunk)
            )


async def setup(bus: BenchBus, events: int, workdir: Path) -> PipelineBench:
    """Schemas, registry, the published batch, the child loops' topics and configuration."""
    catalog = Catalog.load()
    client = AsyncSchemaRegistryClient({"url": bus.registry_url})
    _, problems = await register_catalog(catalog, client)
    if problems:
        raise BenchError(f"the catalogue schemas could not be registered: {problems}")
    registry = _bench_registry(workdir)
    kafka = KafkaSettings(bootstrap_servers=bus.bootstrap)
    await apply_registry(registry, kafka, TopicSettings())
    batches = []
    for event_type in BATCH_TYPES:
        owner = catalog.event_types[event_type].owner
        subscriptions = sorted(
            (s for s in registry.document.subscriptions if event_type in s.event_types),
            key=lambda s: s.id,
        )
        if len({s.subscriber for s in subscriptions}) != FANOUT:
            raise BenchError(f"{event_type} needs {FANOUT} agreements with distinct subscribers")
        key_id = next(k.id for k in registry.institutions[owner].keys if not k.revoked)
        curve = load_private_key((DEMO_KEYS / f"{owner}.key.pem").read_bytes()).curve
        batches.append(Batch(event_type, owner, key_id, curve, subscriptions))
    batch_topics = [topics.ingress(b.publisher) for b in batches]
    start = await end_offsets(bus.bootstrap, batch_topics)
    for batch in batches:
        await _publish(bus, catalog, batch, events)
    end = await end_offsets(bus.bootstrap, batch_topics)
    records = await read_range(bus.bootstrap, start, end)
    if len(records) != events * len(batches):
        raise BenchError(f"read back {len(records)} ingress records of {events * len(batches)}")

    # The same-work loop gets the writer schemas as registered, the very delivery schemas the
    # pipeline registers for these agreements, and the publishers' public keys.
    store = SchemaStore(client)
    writers: dict[int, WriterSchema] = {}
    for r in records:
        sid = schema_id_of(r.value)
        writers[sid] = writers.get(sid) or await store.writer_schema(sid)
    by_type = {w.full_name: w for w in writers.values()}
    run_tag = uuid.uuid4().hex[:8]
    routes: dict[str, list[dict[str, Any]]] = {}
    for batch in batches:
        source = json.loads(by_type[batch.event_type].text)
        routes[batch.event_type] = []
        for subscription in batch.subscriptions:
            schema = delivery_schema(source, batch.event_type, subscription)
            name = delivery_name(subscription.id, batch.event_type)
            routes[batch.event_type].append({
                "subscription": subscription.model_dump(mode="json"),
                "schema_id": await store.register(name, schema),
                "schema": schema,
                "topic": f"bench.pipeline.{run_tag}.deliver.{subscription.subscriber}",
            })  # fmt: skip
    copy_topics = [f"bench.pipeline.{run_tag}.copy.{n}" for n in range(FANOUT)]
    work_topics = sorted({route["topic"] for rs in routes.values() for route in rs})
    partitions = TopicSettings().deliver_partitions
    new_topics = [NewTopic(name, partitions, 1) for name in copy_topics + work_topics]
    await asyncio.to_thread(admin_call, bus.bootstrap, "create_topics", new_topics)
    keys = {
        k.id: k.public_key
        for b in batches
        for k in registry.institutions[b.publisher].keys
        if not k.revoked
    }
    keyring = KeyRing()
    for key_id, public_key in keys.items():
        keyring.add(key_id, load_public_key(public_key))
    ingress = [topics.ingress(i) for i in sorted(registry.institutions)]
    view = RegistryView(kafka)  # read once, as a worker does when it starts
    await view.start(follow=False)
    await view.stop()
    bus_key = load_private_key(DEMO_BUS_KEY.read_bytes())
    return PipelineBench(
        bootstrap=bus.bootstrap,
        registry_url=bus.registry_url,
        workdir=workdir,
        batches=batches,
        ingress=ingress,
        batch_start=start,
        records=records,
        child_config={
            "bootstrap": bus.bootstrap,
            "ingress": ingress,
            "copy_topics": copy_topics,
            "work_topics": work_topics,
            "writers": {str(sid): w.text for sid, w in writers.items()},
            "routes": routes,
            "keys": keys,
        },
        pipeline=Pipeline(
            view,
            SchemaStore(client),
            BusKey(DEMO_BUS_KEY_ID, bus_key),
            AuditChain(f"bench-pipeline/{run_tag}"),
        ),
        bus_key=bus_key,
        keyring=keyring,
        bench_topics=copy_topics + work_topics,
        broker_pid=bus.broker_pid,
    )


async def _clean_up(bootstrap: str, bench: PipelineBench | None) -> None:
    """Bench topics and groups deleted (best effort), the example registry applied again."""
    if bench is not None:
        for call, names in (("delete_topics", bench.bench_topics),
                            ("delete_consumer_groups", bench.groups)):  # fmt: skip
            with contextlib.suppress(Exception):
                await asyncio.to_thread(admin_call, bootstrap, call, names)
    example, _ = load_registry(EXAMPLE_REGISTRY)
    try:
        if example is not None:
            kafka = KafkaSettings(bootstrap_servers=bootstrap)
            await apply_registry(example, kafka, TopicSettings())
    except Exception as error:  # never hide the benchmark's own outcome behind this
        print(f"bench_pipeline: the example registry was not applied again: {error}",
              file=sys.stderr)  # fmt: skip


async def run(
    bus: BenchBus, repeat: int, events: int = EVENTS, *, scaling_only: bool = False
) -> Section:
    """Set up once, then every side ``repeat`` times, side by side; see the module doc.
    ``scaling_only``: only the replays (1 worker, 2 workers, ``--processes 2``)."""
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    samples: dict[str, list[float]] = defaultdict(list)
    bench: PipelineBench | None = None
    try:
        bench = await setup(bus, events, workdir)
        processes_supported = await asyncio.to_thread(cli_has_option, ["worker"], "--processes")
        setup_s = time.monotonic() - began
        in_process = bench.in_process_records()
        await bench.check_handle(in_process)
        for _ in range(0 if scaling_only else repeat):
            samples["bare"].append(await bench.child_side("copy"))
            samples["work"].append(await bench.child_side("work"))
            samples["ours"].append(await bench.worker_side(1, replay=False))
            samples["handle"].append(await bench.handle_rate(in_process))
            for batch in bench.batches:
                samples[batch.curve].append(bench.crypto_ceiling(in_process, batch.event_type))
        # Last: a replay adds the batch again to the ingress topics, after the batch.
        for _ in range(repeat):
            samples["one"].append(await bench.worker_side(1, replay=True))
            samples["two"].append(await bench.worker_side(2, replay=True))
            if processes_supported:  # an older tree (``--before``) may not have it
                samples["processes"].append(await bench.worker_side(1, replay=True, processes=2))
        profile = [] if scaling_only else await bench.profile(in_process)
    except BaseException:
        print(f"bench_pipeline: logs kept in {workdir}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        await _clean_up(bus.bootstrap, bench)

    total = events * len(bench.batches)
    section = Section(f"Pipeline: {total} events x {FANOUT} deliveries, govesb worker vs bare")
    scaling: list[tuple[str, str, Figure, str]] = [
        ("one_worker_replay_events_per_s", "1 worker, batch written while it runs",
         Figure.of(samples["one"]), "events/s"),
        ("two_workers_events_per_s", "2 workers, batch written while they run",
         Figure.of(samples["two"]), "events/s"),
        ("scaling_ratio", "scaling: 2 workers / 1 worker",
         ratios(samples["two"], samples["one"]), "x"),
    ]  # fmt: skip
    if samples["processes"]:
        scaling += [
            ("processes_events_per_s", "govesb worker --processes 2, batch written while it runs",
             Figure.of(samples["processes"]), "events/s"),
            ("processes_ratio", "scaling: --processes 2 / 1 process",
             ratios(samples["processes"], samples["one"]), "x"),
        ]  # fmt: skip
    rows: list[tuple[str, str, Figure, str]] = [] if scaling_only else [
        ("pipeline_events_per_s", "pipeline (1 govesb worker)", Figure.of(samples["ours"]),
         "events/s"),
        ("bare_loop_events_per_s", "bare consume->produce x3 loop", Figure.of(samples["bare"]),
         "events/s"),
        ("framework_ratio", "ratio 2a: pipeline / bare loop",
         ratios(samples["ours"], samples["bare"]), "x"),
        ("same_work_events_per_s", "same-work loop", Figure.of(samples["work"]), "events/s"),
        ("same_work_ratio", "ratio 2b: pipeline / same-work loop",
         ratios(samples["ours"], samples["work"]), "x"),
        ("handle_events_per_s", "Pipeline.handle in process, no Kafka",
         Figure.of(samples["handle"]), "events/s"),
        ("crypto_ceiling_secp256k1", "crypto ceiling, secp256k1 publisher",
         Figure.of(samples["secp256k1"]), "events/s"),
        ("crypto_ceiling_p256", "crypto ceiling, P-256 publisher",
         Figure.of(samples["secp256r1"]), "events/s"),
    ]  # fmt: skip
    for key, label, figure, unit in rows + scaling:
        section.add(key, label, figure, unit)
    partitions: dict[str, int] = defaultdict(int)
    for tp in bench.batch_start:
        partitions[tp.topic] += 1
    section.extra.update({
        "events_per_batch": events,
        "events_total": total,
        "deliveries_per_event": FANOUT,
        "repetitions": repeat,
        "batches": [
            {"event_type": b.event_type, "publisher": b.publisher, "key_id": b.key_id,
             "curve": b.curve, "subscriptions": [s.id for s in b.subscriptions]}
            for b in bench.batches
        ],
        "bus_key": {"key_id": DEMO_BUS_KEY_ID, "curve": bench.bus_key.curve},
        "crypto_ceiling_work": f"1 publisher verify + {FANOUT} bus signs, per event",
        "crypto_us_per_op": per_op_us(),
        "ingress_partitions": dict(partitions),
        "worker_ingress_topics": len(bench.ingress),
        "worker_partitions_in_replays": bench.assignments,
        "cpu_cores_used": dict(bench.cpu),
        "worker_events_handled": bench.worker_events,
        "in_process_records": len(in_process),
        "profile": profile,
        "phase_s": {k: round(v, 1) for k, v in bench.phase_s.items()},
        "setup_s": round(setup_s, 1),
        "elapsed_s": round(time.monotonic() - began, 1),
    })  # fmt: skip
    print("\nCPU during each replay, in cores (2.0 = this whole machine):")
    for side, figures in bench.cpu.items():
        print(f"  {side}: {figures}")
    if scaling_only:
        return section
    print(f"\nPipeline.handle under cProfile, {len(in_process)} records: top by own time")
    for row in profile:
        print(f"  {row['share_pct']:5.1f}%  {row['calls']:>7}  {row['function']}")
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=EVENTS, help="events per publisher curve")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scaling-only", action="store_true",
                        help="only the replays: 1 worker, 2 workers, --processes 2")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a bare loop's config file
    args = parser.parse_args()
    if args.child:
        asyncio.run(child_loop(json.loads(Path(args.child).read_text())))
        return
    with bench_bus() as bus:
        section = asyncio.run(run(bus, args.repeat, args.events, scaling_only=args.scaling_only))
    print_section(section)
    print(json.dumps(section.as_dict()))


if __name__ == "__main__":
    main()
