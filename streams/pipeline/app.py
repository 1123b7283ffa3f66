"""The Faust app of the pipeline: the one ``faust.App``, its topics, agent and web pages.

Faust gives the consumer group, partition assignment, the agent and the web server. Outputs
are produced by the worker's own producer (``streams.pipeline.writer``: acks=all, idempotent)
and an ingress event is acked — so its offset may be committed — only after every output of
it was acknowledged by the broker or replaced by a rejection that was; acks keep the order of
each partition and only of each partition (``streams.pipeline.acking``). A partition whose
output cannot be written at all is held, and ``/health`` says so. ``processing_guarantee``
stays at-least-once with stable event ids. The app's consumer is Faust's with the message
hand-over and idle wait of ``streams.pipeline.consumer``, and its Monitor keeps no per-event
statistics (the bus's are ``streams.pipeline.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaError
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from streams import health
from streams.audit.chain import new_chain, process_instance
from streams.client import fetch_guard
from streams.contract import topics
from streams.contract.codec import RegistryUnavailableError, SchemaStore
from streams.contract.reasons import Reason
from streams.contract.signing import load_private_key
from streams.contract.tracecontext import TraceParent, contexts
from streams.health import metrics_text
from streams.pipeline.acking import InFlightBudget, Lanes
from streams.pipeline.consumer import App, QuietMonitor
from streams.pipeline.duplicate_log import DuplicateLog
from streams.pipeline.duplicates import DuplicateWindow
from streams.pipeline.metrics import PipelineMetrics
from streams.pipeline.outputs import (
    Failure,
    describe,
    is_rejection,
    was_cut,
)
from streams.pipeline.process import BusKey, Outcome, Output, Pipeline, traced
from streams.pipeline.validation import IngressRecord, Limits
from streams.pipeline.writer import OutputProducer, OutputWriter, Unwritable, event_id
from streams.registry.view import RegistryView
from streams.retrying import until_available
from streams.settings import KafkaSettings, WorkerSettings
from streams.supervising import ProcessSlot
from streams.tracing import WORKER, Hop, SpanKind, Tracing

log = logging.getLogger(__name__)


@dataclass
class _InFlight:
    event: Any
    record: IngressRecord
    outcome: Outcome
    futures: list[asyncio.Future[Any]]
    started: float
    size: int
    hop: Hop
    refused: list[str] = field(default_factory=list)  # delivery topics that refused

    @property
    def event_id(self) -> str:
        return event_id(self.record)


def _size(record: IngressRecord, outcome: Outcome) -> int:
    """Bytes an event holds while in flight: its record and every output."""
    return len(record.value or b"") + sum(
        len(o.value or b"") + len(o.key or b"") + sum(len(v) for _, v in o.headers)
        for o in outcome.outputs
    )


class PipelineWorker:
    """State of one worker process: registry view, pipeline, producer, acks per partition."""

    def __init__(self, app: faust.App, settings: WorkerSettings) -> None:
        self.app = app
        self.settings = settings
        self.metrics = PipelineMetrics()
        self.tracing = Tracing(settings.tracing, WORKER)
        self.view = RegistryView(
            settings.kafka,
            refused_keys=settings.refused_key_ids,
            gateway_keys=settings.gateway_key_ids,
            stale_after_s=settings.registry_stale_after_s,
        )
        self.view.on_change(lambda _key: self.metrics.registry_version.inc())
        self.writer = OutputWriter(settings, self.metrics)
        self.pipeline: Pipeline | None = None
        self.budget = InFlightBudget(settings.max_in_flight, settings.max_in_flight_bytes)
        self.lanes: Lanes[_InFlight] = Lanes(self._settle, self._ack, self._acker_died)
        self.halted: dict[str, str] = {}  # "topic[partition]" -> what could not be written
        self.fatal: str | None = None
        self.slot = ProcessSlot()  # which of `govesb worker --processes N` this is
        self._crashing: asyncio.Task[None] | None = None
        self._started = asyncio.Lock()
        self._last_acked: dict[tuple[str, int], int] = {}
        self._stream: Any = None
        self.ingress_topics: set[str] = set()
        self.instance = process_instance(settings.app_id)
        self.duplicates = DuplicateLog(
            DuplicateWindow(
                dt.timedelta(seconds=settings.duplicate_window_s), settings.duplicate_window_max_ids
            ),
            settings.kafka,
            self.instance,
        )

    @property
    def producer(self) -> OutputProducer | None:
        """The producer of the outputs (None before ``start``)."""
        return self.writer.producer

    @producer.setter
    def producer(self, producer: OutputProducer | None) -> None:
        self.writer.producer = producer

    async def start(self) -> None:
        """Load the registry, connect the producer; once."""
        async with self._started:
            if self.pipeline is not None:
                return
            if self.settings.signing_key_file is None or not self.settings.signing_key_id:
                raise RuntimeError(
                    "the bus signing key is not configured: set GOVESB_SIGNING_KEY_FILE and "
                    "GOVESB_SIGNING_KEY_ID"
                )
            key = load_private_key(self.settings.signing_key_file.read_bytes())
            await self.view.start()
            await self.writer.start()
            # Before the first event: a re-send after a restart is then a duplicate.
            await self.duplicates.start()
            chain = new_chain(self.settings.app_id)
            self.pipeline = Pipeline(
                self.view,
                SchemaStore(
                    AsyncSchemaRegistryClient(self.settings.schema_registry.client_config())
                ),
                BusKey(self.settings.signing_key_id, key),
                chain,
                Limits(
                    self.settings.max_value_bytes,
                    dt.timedelta(seconds=self.settings.max_future_skew_s),
                ),
                self.duplicates.window,
            )
            self.writer.replay_claim = self.pipeline.replay_claim
            self.metrics.acker_up.set(1)
            log.info("pipeline ready: %d subscriptions", len(self.view.subscriptions))

    async def run(self, stream: Any) -> None:
        """The agent: handle each ingress event; its outputs are settled and it is acked, in
        order per partition, by :attr:`lanes`."""
        await self.start()
        manual = stream.noack()
        self._stream = manual
        async for event in manual.events():
            message = event.message
            record = IngressRecord(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
                headers=tuple((k, v) for k, v in (message.headers or [])),
                timestamp_ms=int((message.timestamp or 0) * 1000),
            )
            started = time.monotonic()
            hop, creation = self._hop(record)
            outcome = traced(await self._handle(record), hop.context, creation or hop.context)
            size = _size(record, outcome)
            await self.budget.acquire(size)
            futures = [await self.writer.send(output) for output in outcome.outputs]
            self.metrics.in_flight.inc()
            self.metrics.in_flight_bytes.inc(size)
            item = _InFlight(event, record, outcome, futures, started, size, hop)
            self.lanes.put((record.topic, record.partition), item)
            self.writer.handled(nothing_waiting=manual.channel.queue.empty())

    def _hop(self, record: IngressRecord) -> tuple[Hop, TraceParent | None]:
        """The worker's hop of ``record``'s trace (the child of the writer's ``traceparent``,
        or of the event's creation context), and that creation context if it has one."""
        written, creation = contexts(record.headers)
        hop = self.tracing.start(
            f"process {record.topic}", written or creation, SpanKind.CONSUMER,
            {"messaging.system": "kafka", "messaging.destination.name": record.topic},
            creation=creation,
        )  # fmt: skip
        return hop, creation

    async def _handle(self, record: IngressRecord) -> Outcome:
        pipeline = self.pipeline
        assert pipeline is not None  # noqa: S101 - start() ran
        return await until_available(
            lambda: pipeline.handle(record), RegistryUnavailableError, "schema registry", log
        )

    async def _settle(self, item: _InFlight) -> None:
        """Every output of ``item`` acknowledged, or replaced by a rejection that was."""

        def replaced(refused: Output, replacement: Output) -> None:
            self._count_replacement(item, refused, replacement)

        futures = item.futures
        waiting = [future for future in futures if not future.done()]
        if waiting:  # one wait for all; what is not acknowledged in time is settled below
            await asyncio.wait(waiting, timeout=self.settings.output_check_s)
        for index, output in enumerate(item.outcome.outputs):
            future = futures[index]
            if future.done() and not future.cancelled() and future.exception() is None:
                continue  # acknowledged: nearly every output, every time
            try:
                await self.writer.settle(item.record, output, future, replaced)
            except Unwritable as failure:
                await self._halt(item, failure.output, failure.error, failure.failure)

    def _count_replacement(self, item: _InFlight, refused: Output, replacement: Output) -> None:
        if is_rejection(refused):
            self.metrics.rejections_cut.labels(item.outcome.publisher).inc()
            return
        item.refused.append(refused.topic)
        self.metrics.undeliverable.labels(refused.topic).inc()
        self.metrics.rejections.labels(item.outcome.publisher, str(Reason.UNDELIVERABLE)).inc()
        if was_cut(replacement):
            self.metrics.rejections_cut.labels(item.outcome.publisher).inc()

    async def _halt(
        self, item: _InFlight, output: Output, error: KafkaError, failure: Failure
    ) -> None:
        """Nothing can be written in place of ``output``: hold its partition (never acked, so
        read again after a restart), say so in the log, ``/health`` and the metrics."""
        topic, partition, offset = item.record.position
        what = (f"{output.topic} refused the output of {topic}[{partition}]@{offset} "
                f"(event {item.event_id}) and nothing can replace it: "
                f"{describe(error)}")  # fmt: skip
        self.halted[f"{topic}[{partition}]"] = what
        self.metrics.halted_partitions.set(len(self.halted))
        log.error("partition %s[%d] halted until the worker restarts: %s", topic, partition, what)
        with contextlib.suppress(Exception):  # a partition revoked meanwhile: nothing to pause
            self.app.consumer.pause_partitions({TP(topic, partition)})
        if failure is Failure.FATAL:
            self.fatal = what
            self._crash(error)
        await asyncio.Event().wait()  # held; cancelled at shutdown

    def _acker_died(self, error: BaseException) -> None:
        self.metrics.acker_up.set(0)
        if self._crashing is None:
            log.critical("the acker of the ingress events died (%r); the worker exits", error)
        self._crash(error)

    def _crash(self, error: BaseException) -> None:
        """Stop the worker with ``error``: it exits non-zero and is restarted by its manager."""
        if self._crashing is None:  # once: Faust stops the worker, which exits with 1
            self._crashing = asyncio.get_running_loop().create_task(self.app.crash(error))

    async def _ack(self, item: _InFlight) -> None:
        await self._stream.ack(item.event)
        await self.budget.release(item.size)
        self.metrics.in_flight_bytes.dec(item.size)
        self._account(item)
        if item.hop.span is not None:  # acknowledged: the worker's hop is over
            outcome = item.outcome
            item.hop.set({
                "cloudevents.event_id": item.event_id,
                "cloudevents.event_type": outcome.event_type,
                "govesb.outcome": str(outcome.reason or ("routed" if outcome.subscribers
                                                         else "received")),
                "govesb.subscribers": ",".join(outcome.subscribers),
            })  # fmt: skip
            item.hop.end(error=str(outcome.reason) if outcome.reason else None)

    def _account(self, item: _InFlight) -> None:
        outcome, record = item.outcome, item.record
        self.metrics.in_flight.dec()
        self.metrics.latency.observe(time.monotonic() - item.started)
        kind = "rejected" if outcome.reason else ("routed" if outcome.subscribers else "received")
        self.metrics.events.labels(outcome.publisher, outcome.event_type or "unknown", kind).inc()
        if outcome.reason:
            self.metrics.rejections.labels(outcome.publisher, str(outcome.reason)).inc()
        for subscriber in outcome.subscribers if not outcome.api else ():  # calls: above
            if topics.deliver(subscriber) not in item.refused:
                self.metrics.deliveries.labels(subscriber, outcome.event_type).inc()
        if outcome.api:
            self.metrics.calls.labels(outcome.api, outcome.call).inc()
            if outcome.round_trip_s is not None:
                self.metrics.call_seconds.labels(outcome.api).observe(outcome.round_trip_s)
        for failure in outcome.failures:
            self.metrics.delivery_failures.labels(
                failure.subscription, failure.subscriber, str(failure.reason)
            ).inc()
        self._last_acked[(record.topic, record.partition)] = record.offset

    def update_lag(self) -> None:
        """Consumer lag per assigned partition: highwater - next offset to ack; the age of the
        oldest event in flight."""
        self.metrics.oldest_in_flight.set(self.lanes.oldest_age_s())
        consumer = self.app.consumer
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            done = self._last_acked.get((tp.topic, tp.partition))
            committed = (done + 1) if done is not None else highwater
            self.metrics.lag.labels(self.settings.app_id, tp.topic, str(tp.partition)).set(
                max(0, highwater - committed)
            )

    async def drain(self, bound_s: float) -> None:
        """Wait (bounded) until every event in flight is acknowledged; then stop the lanes."""
        if not await self.lanes.join(bound_s):
            log.warning("%d event(s) not acknowledged at shutdown; they will be read again",
                        len(self.lanes))  # fmt: skip
        await self.lanes.cancel()

    async def stop(self) -> None:
        """Drain in-flight work (bounded), then close the producer and the registry view."""
        await self.drain(self.settings.shutdown_timeout_s / 2)
        await self.duplicates.stop()
        await self.writer.stop()
        await self.view.stop()
        await asyncio.to_thread(self.tracing.shutdown)  # the last spans exported

    def unconsumed_ingress(self) -> set[str]:
        """Ingress topics of registered institutions this process does not consume."""
        return {topics.ingress(i) for i in self.view.institutions} - self.ingress_topics

    def _assigned(self) -> int:
        try:
            return len(self.app.consumer.assignment())
        except ConsumerNotStarted:  # /health asked before the consumer started
            return 0

    def health(self) -> tuple[int, dict[str, Any]]:
        """Per-component checks; 200 when all pass, 503 otherwise."""
        oldest = self.lanes.oldest_age_s()
        checks: dict[str, dict[str, Any]] = {
            "registry_view": {
                **health.registry_view_check(self.view),
                "records": len(self.view.raw),
            },
            "producer": {
                "ok": self.producer is not None and not self.halted and self.fatal is None,
                "halted_partitions": dict(self.halted),
            },
            "partitions": {"ok": True, "assigned": self._assigned()},
            "pipeline": {"ok": self.pipeline is not None, "in_flight": len(self.lanes)},
            "outputs": {
                "ok": oldest <= self.settings.stuck_after_s,
                "oldest_in_flight_s": round(oldest, 1),
                "stuck_after_s": self.settings.stuck_after_s,
                "in_flight_bytes": self.budget.bytes,
            },
            "acker": {
                "ok": self.lanes.dead is None,
                "error": repr(self.lanes.dead) if self.lanes.dead is not None else None,
            },
            "subscriptions": {"ok": True, "count": len(self.view.subscriptions)},
            "process": self.slot.health(),
            "duplicate_window": self.duplicates.health(),
            "ingress_topics": {
                "ok": not self.unconsumed_ingress(),
                "consumed": len(self.ingress_topics),
                "restart_needed_for": sorted(self.unconsumed_ingress()),
            },
        }
        return health.report(checks)


def create_app(
    settings: WorkerSettings, ingress_topics: list[str]
) -> tuple[faust.App, PipelineWorker]:
    """The pipeline's Faust app, consuming ``ingress_topics``, and its worker state.

    The topics are fixed for the life of the process (faust-streaming's pattern subscription
    does not work with aiokafka 0.14): an institution added later is picked up on restart,
    and ``/health`` says so meanwhile.
    """
    fetch_guard.install()
    # the pipeline keeps no Faust tables; without this Faust makes <app_id>-data in cwd
    datadir = Path(tempfile.gettempdir()) / "govesb-faust" / settings.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    # Faust's consumer without its per-message task race, and a Monitor without per-event
    # sensors (streams.pipeline.consumer says what and why).
    app = App(
        settings.app_id,
        Monitor=QuietMonitor,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        datadir=datadir,
        broker=[f"kafka://{server}" for server in settings.kafka.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings.kafka),
        broker_client_id=settings.kafka.client_id,
        key_serializer="raw",
        value_serializer="raw",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        autodiscover=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        stream_wait_empty=False,
        producer_acks=-1,
        worker_redirect_stdouts=False,
    )
    worker = PipelineWorker(app, settings)
    worker.ingress_topics = set(ingress_topics)
    ingress = app.topic(*sorted(ingress_topics), key_type=bytes, value_type=bytes)
    app.agent(ingress, name="pipeline")(worker.run)

    async def lag() -> None:
        worker.update_lag()

    app.timer(interval=5.0)(lag)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        worker.update_lag()
        text, content_type = metrics_text(worker.metrics.registry)
        return web.bytes(text, headers={"Content-Type": content_type})

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        status, body = worker.health()
        return web.bytes(json.dumps(body).encode(), content_type="application/json", status=status)

    def stop(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> Awaitable[None]:
        return worker.stop()

    app.on_before_shutdown.connect(stop)
    return app, worker


def broker_credentials(kafka: KafkaSettings) -> faust.auth.Credentials | None:
    """Faust's form of the TLS and SASL settings every other client takes from ``kafka``."""
    options = kafka.aiokafka_options()
    context = options.get("ssl_context")
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


async def ingress_topics_of(settings: WorkerSettings) -> list[str]:
    """The ingress topics of every institution in ``esb.registry`` now."""
    view = RegistryView(settings.kafka)
    await view.start(follow=False)
    await view.stop()
    return [topics.ingress(institution) for institution in sorted(view.institutions)]


def run_worker(
    settings: WorkerSettings, loglevel: str = "INFO", slot: ProcessSlot | None = None
) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT (``govesb worker``); ``slot``
    says which of ``govesb worker --processes N`` it is."""
    from faust import Worker

    app, pipeline_worker = create_app(settings, asyncio.run(ingress_topics_of(settings)))
    if slot is not None:
        pipeline_worker.slot = slot
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner (on at WARNING and above) sets the root logger to DEBUG so it
    # can spin on every record: every debug call of aiokafka then builds a record per event.
    worker.spinner = None
    worker.execute_from_commandline()
