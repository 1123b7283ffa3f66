"""``govesb connect http-sink``: the sink process (consumer loop, /health, /metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink.delivery import CircuitBreaker, RetryPolicy
from connectors.http_sink.flow import PartitionFlow
from connectors.http_sink.metrics import BREAKER_STATES
from connectors.http_sink.sink import Credentials, HttpSink
from connectors.serving import serve, stop_requested
from connectors.settings import SinkSettings
from streams.audit.chain import new_chain
from streams.contract import topics
from streams.contract.codec import SchemaStore
from streams.contract.signing import load_private_key
from streams.health import metrics_text, registry_view_check, report
from streams.registry.view import RegistryView
from streams.settings import PRODUCE_BATCH_BYTES
from streams.tracing import SINK, Tracing

log = logging.getLogger(__name__)


class SinkError(RuntimeError):
    """The sink cannot start as configured; the message says what to fix."""


async def build_sink(settings: SinkSettings, view: RegistryView) -> HttpSink:
    """A sink for ``settings.subscriber``'s endpoint from the registry."""
    institution = view.institutions.get(settings.subscriber)
    if institution is None or institution.endpoint is None:
        raise SinkError(f"{settings.subscriber!r} has no HTTP endpoint in esb.registry")
    endpoint = institution.endpoint
    if endpoint.auth.type == "mtls" and not (
        settings.client_cert_file and settings.client_key_file
    ):
        raise SinkError(
            "mtls endpoint auth needs GOVESB_CLIENT_CERT_FILE and GOVESB_CLIENT_KEY_FILE"
        )
    if endpoint.auth.type == "oauth2" and not (endpoint.auth.token_url and endpoint.auth.username):
        raise SinkError("oauth2 endpoint auth needs token_url and username (the client id)")
    secret = settings.secret(endpoint.auth.secret_ref)
    if endpoint.auth.type in ("bearer", "basic", "hmac", "oauth2") and secret is None:
        raise SinkError(
            f"endpoint auth {endpoint.auth.type} needs the secret {endpoint.auth.secret_ref!r}: "
            f"set GOVESB_SECRETS__{(endpoint.auth.secret_ref or '').upper()}"
        )
    if settings.signing_key_file is None or not settings.signing_key_id:
        raise SinkError("set GOVESB_SIGNING_KEY_FILE and GOVESB_SIGNING_KEY_ID (the bus key)")
    # A flush's receipts go to esb.audit in as few produce requests as the batch size allows.
    producer = AIOKafkaProducer(
        **settings.kafka.durable_producer_options(linger_ms=2, max_batch_size=PRODUCE_BATCH_BYTES)
    )
    await producer.start()
    return HttpSink(
        subscriber=settings.subscriber,
        endpoint=endpoint,
        session=aiohttp.ClientSession(),
        producer=producer,
        schemas=SchemaStore(AsyncSchemaRegistryClient(settings.schema_registry.client_config())),
        bus_key=load_private_key(settings.signing_key_file.read_bytes()),
        bus_key_id=settings.signing_key_id,
        chain=new_chain(f"sink-{settings.subscriber}"),
        credentials=Credentials(
            secret.get_secret_value() if secret else None, endpoint.auth.username
        ),
        policy=RetryPolicy(
            settings.max_attempts, settings.backoff_initial_s, settings.backoff_max_s
        ),
        breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown_s),
        concurrency=settings.concurrency,
        max_response_bytes=settings.max_response_bytes,
        ssl_context=tls_context(settings, endpoint.verify_tls),
        tracing=Tracing(settings.tracing, SINK),
    )


def tls_context(settings: SinkSettings, verify: bool) -> ssl.SSLContext | None:
    """Client TLS: the configured CA (or the system's), and a client certificate for mTLS."""
    if not (settings.ca_file or settings.client_cert_file):
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.client_cert_file and settings.client_key_file:
        context.load_cert_chain(settings.client_cert_file, settings.client_key_file)
    return context


async def serve_web(
    sink: HttpSink,
    settings: SinkSettings,
    consumer: AIOKafkaConsumer,
    flow: PartitionFlow,
    view: RegistryView,
) -> web.AppRunner:
    """/health and /metrics."""

    async def health(_: web.Request) -> web.Response:
        state = sink.breaker.state
        assigned = len(consumer.assignment())
        status, body = report(
            {
                "endpoint": {"ok": state != "open", "breaker": state},
                # "waiting": partitions paused while their records are being delivered.
                "consumer": {
                    "ok": assigned > 0,
                    "partitions": assigned,
                    "waiting": len(flow.waiting),
                },
                "registry_view": registry_view_check(view),
            }
        )
        return web.json_response(body, status=status, dumps=json.dumps)

    async def metrics(_: web.Request) -> web.Response:
        sink.metrics.breaker.labels(sink.subscriber).set(BREAKER_STATES[sink.breaker.state])
        text, content_type = metrics_text(sink.metrics.registry)
        return web.Response(body=text, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return await serve(app, settings.web_host, settings.web_port)


async def record_lag(sink: HttpSink, consumer: AIOKafkaConsumer) -> None:
    """``govesb_consumer_lag``: records of each assigned partition not yet delivered."""
    group = topics.sink_group(sink.subscriber)
    for partition in consumer.assignment():
        highwater = consumer.highwater(partition)
        if highwater is None:
            continue
        lag = max(0, highwater - await consumer.position(partition))
        sink.metrics.lag.labels(group, partition.topic, str(partition.partition)).set(lag)


async def run_sink(settings: SinkSettings) -> None:
    """Consume, deliver, commit; until SIGTERM/SIGINT, then finish (bounded) what is in hand."""
    view = RegistryView(settings.kafka)
    await view.start()
    sink = await build_sink(settings, view)
    consumer = AIOKafkaConsumer(
        **settings.kafka.aiokafka_options(),
        group_id=topics.sink_group(settings.subscriber),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )

    def follow_registry() -> None:
        institution = view.institutions.get(settings.subscriber)
        if institution is not None and institution.endpoint is not None:
            # Registry changes apply to the next requests, those of waiting records included
            # (a corrected URL reaches a sink whose endpoint is down).
            sink.endpoint = institution.endpoint

    flow = PartitionFlow(
        consumer,
        sink,
        max_records=settings.batch_max_records,
        wait_s=settings.flush_wait_s,
        commit_interval_s=settings.commit_interval_s,
        every_poll=follow_registry,
        after_commit=lambda: record_lag(sink, consumer),
    )
    # A subscriber that may call APIs also gets the answers that came after its call gave up.
    asks = any(g.consumer == settings.subscriber for g in view.grants.values())
    sources = [topics.deliver(settings.subscriber)]
    sources += [topics.reply(settings.subscriber)] if asks else []
    consumer.subscribe(sources, listener=flow)
    await consumer.start()
    stopping = stop_requested()
    runner = await serve_web(sink, settings, consumer, flow, view)
    log.info("delivering %s to %s", " and ".join(sources), sink.endpoint.url)
    try:
        await flow.run(stopping)
    finally:
        await consumer.stop()
        await sink.close()
        await sink.producer.stop()
        await view.stop()
        await asyncio.to_thread(sink.tracing.shutdown)  # the last spans exported
        with contextlib.suppress(Exception):
            await runner.cleanup()
