"""The Faust app of the pipeline: the one ``faust.App``, its topics, agent and web pages.

Faust gives the consumer group, partition assignment, the agent and the web server. Outputs
are produced with the worker's own aiokafka producer (acks=all, idempotent) and an ingress
event is acked — so its offset may be committed — only after the broker acknowledged every
output of it, in order. ``processing_guarantee`` stays at-least-once with stable event ids.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.audit.chain import new_chain, process_instance
from streams.contract import topics
from streams.contract.codec import RegistryUnavailableError, SchemaStore
from streams.contract.signing import load_private_key
from streams.pipeline import fetch_guard
from streams.pipeline.duplicate_log import DuplicateLog
from streams.pipeline.duplicates import DuplicateWindow
from streams.pipeline.metrics import PipelineMetrics
from streams.pipeline.process import BusKey, Outcome, Output, Pipeline
from streams.pipeline.validation import IngressRecord, Limits
from streams.registry.sync import RegistryView
from streams.retrying import until_available
from streams.settings import PRODUCE_BATCH_BYTES, KafkaSettings, WorkerSettings

log = logging.getLogger(__name__)
# Fewer, fuller produce requests: the broker shares the machine's cores with the workers
# (make bench: one worker 1,099 -> 1,360 events/s, two 1,231 -> 1,722 going from 2 to 8 ms).
OUTPUT_LINGER_MS = 8


@dataclass
class _InFlight:
    event: Any
    record: IngressRecord
    outcome: Outcome
    futures: list[asyncio.Future[Any]]
    started: float


class PipelineWorker:
    """State of one worker process: registry view, pipeline, producer, ack tracker."""

    def __init__(self, app: faust.App, settings: WorkerSettings) -> None:
        self.app = app
        self.settings = settings
        self.metrics = PipelineMetrics()
        self.view = RegistryView(
            settings.kafka,
            refused_keys=settings.refused_key_ids,
            gateway_keys=settings.gateway_key_ids,
            stale_after_s=settings.registry_stale_after_s,
        )
        self.view.on_change(lambda _key: self.metrics.registry_version.inc())
        self.producer: AIOKafkaProducer | None = None
        self.pipeline: Pipeline | None = None
        self._queue: asyncio.Queue[_InFlight] = asyncio.Queue(settings.max_in_flight)
        self._acker: asyncio.Task[None] | None = None
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
            producer = AIOKafkaProducer(
                **self.settings.kafka.durable_producer_options(
                    linger_ms=OUTPUT_LINGER_MS, max_batch_size=PRODUCE_BATCH_BYTES
                )
            )
            await producer.start()
            self.producer = producer
            # Before the first event: a re-send after a restart is then a duplicate.
            await self.duplicates.start(producer)
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
            self._acker = asyncio.create_task(self._ack_in_order(), name="pipeline-acker")
            log.info("pipeline ready: %d subscriptions", len(self.view.subscriptions))

    async def run(self, stream: Any) -> None:
        """The agent: handle each ingress event; outputs are acked by ``_ack_in_order``."""
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
            outcome = await self._handle(record)
            futures = [await self._send(output) for output in outcome.outputs]
            self.metrics.in_flight.inc()
            await self._queue.put(_InFlight(event, record, outcome, futures, started))

    async def _handle(self, record: IngressRecord) -> Outcome:
        pipeline = self.pipeline
        assert pipeline is not None  # noqa: S101 - start() ran
        return await until_available(
            lambda: pipeline.handle(record), RegistryUnavailableError, "schema registry", log
        )

    async def _send(self, output: Output) -> asyncio.Future[Any]:
        assert self.producer is not None  # noqa: S101 - start() ran
        delay = 0.5
        while True:
            try:
                future: asyncio.Future[Any] = await self.producer.send(
                    output.topic, output.value, key=output.key, headers=list(output.headers)
                )
                return future
            except KafkaError as error:
                log.warning("cannot queue a record for %s (%s); retrying", output.topic, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _ack_in_order(self) -> None:
        while True:
            item = await self._queue.get()
            for index, output in enumerate(item.outcome.outputs):
                while True:
                    try:
                        await item.futures[index]
                        break
                    except KafkaError as error:
                        self.metrics.send_retries.inc()
                        log.warning("output to %s not acknowledged (%s); sending again",
                                    output.topic, error)  # fmt: skip
                        item.futures[index] = await self._send(output)
            await self._stream.ack(item.event)
            self._account(item)
            self._queue.task_done()

    def _account(self, item: _InFlight) -> None:
        outcome, record = item.outcome, item.record
        self.metrics.in_flight.dec()
        self.metrics.latency.observe(time.monotonic() - item.started)
        kind = "rejected" if outcome.reason else ("routed" if outcome.subscribers else "received")
        self.metrics.events.labels(outcome.publisher, outcome.event_type or "unknown", kind).inc()
        if outcome.reason:
            self.metrics.rejections.labels(outcome.publisher, str(outcome.reason)).inc()
        for subscriber in outcome.subscribers:
            self.metrics.deliveries.labels(subscriber, outcome.event_type).inc()
        for failure in outcome.failures:
            self.metrics.delivery_failures.labels(
                failure.subscription, failure.subscriber, str(failure.reason)
            ).inc()
        self._last_acked[(record.topic, record.partition)] = record.offset

    def update_lag(self) -> None:
        """Consumer lag per assigned partition: highwater - next offset to ack."""
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
        """Wait (bounded) until every queued event is acknowledged; then stop the acker."""
        if self._acker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), bound_s)
        except TimeoutError:
            log.warning("%d event(s) not acknowledged at shutdown; they will be read again",
                        self._queue.qsize())  # fmt: skip
        self._acker.cancel()
        await asyncio.gather(self._acker, return_exceptions=True)

    async def stop(self) -> None:
        """Drain in-flight work (bounded), then close the producer and the registry view."""
        await self.drain(self.settings.shutdown_timeout_s / 2)
        await self.duplicates.stop(self.producer)
        if self.producer is not None:
            await self.producer.stop()
        await self.view.stop()

    def unconsumed_ingress(self) -> set[str]:
        """Ingress topics of registered institutions this process does not consume."""
        return {topics.ingress(i) for i in self.view.institutions} - self.ingress_topics

    def health(self) -> tuple[int, dict[str, Any]]:
        """Per-component checks; 200 when all pass, 503 otherwise."""
        view = self.view.health()
        checks: dict[str, dict[str, Any]] = {
            # An unreadable record withholds only its institution and is listed here; it does
            # not fail the probe, or every worker would be restarted over one record.
            "registry_view": {
                **view,
                "ok": view["loaded"] and not view["stale"] and bool(self.view.event_types),
                "records": len(self.view.raw),
            },
            "producer": {"ok": self.producer is not None},
            "partitions": {"ok": True, "assigned": len(self.app.consumer.assignment())},
            "pipeline": {"ok": self.pipeline is not None, "in_flight": self._queue.qsize()},
            "subscriptions": {"ok": True, "count": len(self.view.subscriptions)},
            "duplicate_window": self.duplicates.health(),
            "ingress_topics": {
                "ok": not self.unconsumed_ingress(),
                "consumed": len(self.ingress_topics),
                "restart_needed_for": sorted(self.unconsumed_ingress()),
            },
        }
        ok = all(check["ok"] for check in checks.values())
        return (200 if ok else 503), {"status": "ok" if ok else "degraded", "checks": checks}


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
    app = faust.App(
        settings.app_id,
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
        return web.bytes(
            generate_latest(worker.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

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


def run_worker(settings: WorkerSettings, loglevel: str = "INFO") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT (``govesb worker``)."""
    from faust import Worker

    app, _ = create_app(settings, asyncio.run(ingress_topics_of(settings)))
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner (on at WARNING and above) sets the root logger to DEBUG so it
    # can spin on every record: every debug call of aiokafka then builds a record per event.
    worker.spinner = None
    worker.execute_from_commandline()
