"""``govesb connect provider``: the provider connector process (consumer loop, /health,
/metrics)."""

from __future__ import annotations

import contextlib
import json
import logging

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.http_sink.delivery import RetryPolicy
from connectors.provider.connector import ProviderConnector, counts_by_outcome
from connectors.provider.flow import RequestFlow
from connectors.serving import serve, stop_requested
from connectors.settings import ProviderSettings
from streams.contract import topics
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore
from streams.contract.signing import load_private_key
from streams.health import metrics_text, registry_view_check, report
from streams.registry.view import RegistryView

log = logging.getLogger(__name__)


class ProviderError(RuntimeError):
    """The connector cannot start as configured; the message says what to fix."""


def check(settings: ProviderSettings, view: RegistryView) -> None:
    """Raise :class:`ProviderError` unless the connector can serve ``settings.institution``."""
    if settings.delivery_key_file is None:
        raise ProviderError("set GOVESB_DELIVERY_KEY_FILE (the bus's delivery key)")
    if settings.signing_key_file is None or not settings.signing_key_id:
        raise ProviderError(
            "set GOVESB_SIGNING_KEY_FILE and GOVESB_SIGNING_KEY_ID (the gateway key)"
        )
    demo = settings.demo_key_problem(settings.signing_key_id)
    if demo:
        raise ProviderError(demo)
    institution = view.institutions.get(settings.institution)
    if institution is None:
        raise ProviderError(f"{settings.institution!r} is not an institution in esb.registry")
    served = [
        s for s in view.services.values()
        if s.provider == settings.institution and s.served_by == "http"
    ]  # fmt: skip
    if not served:
        # Its requests are read in one group: a connector there would take those meant for
        # the institution's Kafka-native provider.
        raise ProviderError(f"{settings.institution} serves no API over http in esb.registry")
    for service in served:
        auth = service.endpoint.auth if service.endpoint else None
        if auth is not None and auth.type == "mtls":
            raise ProviderError(f"{service.api_code}: mtls is not supported by this connector")
        if (
            auth is not None
            and auth.type != "none"
            and not settings.credentials().get((auth.secret_ref or "").lower())
        ):
            raise ProviderError(
                f"{service.api_code}: endpoint auth {auth.type} needs the secret "
                f"{auth.secret_ref!r}: set GOVESB_SECRETS__{(auth.secret_ref or '').upper()}"
            )


async def build_connector(settings: ProviderSettings, view: RegistryView) -> ProviderConnector:
    """A connector for ``settings.institution``'s HTTP services in the registry."""
    check(settings, view)
    delivery_key, answer_key = settings.delivery_key_file, settings.signing_key_file
    if delivery_key is None or answer_key is None or not settings.signing_key_id:
        raise ProviderError("no keys")  # check() said so already
    producer = AIOKafkaProducer(**settings.kafka.durable_producer_options(linger_ms=1))
    await producer.start()
    institution = view.institutions[settings.institution]
    return ProviderConnector(
        provider=settings.institution,
        system=settings.system or institution.systems[0],
        view=view,
        catalog=Catalog.load(settings.catalog),
        session=aiohttp.ClientSession(),
        producer=producer,
        schemas=SchemaStore(AsyncSchemaRegistryClient(settings.schema_registry.client_config())),
        bus_key=load_private_key(delivery_key.read_bytes()),
        answer_key=load_private_key(answer_key.read_bytes()),
        answer_key_id=settings.signing_key_id,
        gateway_key_ids=frozenset(settings.gateway_key_ids),
        credentials=settings.credentials(),
        backoff=RetryPolicy(10, settings.backoff_initial_s, settings.backoff_max_s),
        max_answer_bytes=settings.max_answer_bytes,
    )


async def serve_web(
    connector: ProviderConnector,
    settings: ProviderSettings,
    consumer: AIOKafkaConsumer,
    flow: RequestFlow,
    view: RegistryView,
) -> web.AppRunner:
    """/health and /metrics."""

    async def health(_: web.Request) -> web.Response:
        assigned = len(consumer.assignment())
        status, body = report(
            {
                "consumer": {
                    "ok": assigned > 0,
                    "partitions": assigned,
                    "in_flight": flow.waiting,
                },
                "answers": {"ok": True, **counts_by_outcome(connector.metrics)},
                "registry_view": registry_view_check(view),
            }
        )
        return web.json_response(body, status=status, dumps=json.dumps)

    async def metrics(_: web.Request) -> web.Response:
        text, content_type = metrics_text(connector.metrics.registry)
        return web.Response(body=text, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return await serve(app, settings.web_host, settings.web_port)


async def run_provider(settings: ProviderSettings) -> None:
    """Consume, answer, commit; until SIGTERM/SIGINT, then finish (bounded) what is in hand."""
    view = RegistryView(
        settings.kafka,
        refused_keys=settings.refused_key_ids,
        gateway_keys=settings.gateway_key_ids,
    )
    await view.start()
    try:
        connector = await build_connector(settings, view)
    except BaseException:
        await view.stop()
        raise
    consumer = AIOKafkaConsumer(
        **settings.kafka.aiokafka_options(),
        group_id=topics.provider_group(settings.institution),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )
    flow = RequestFlow(
        consumer, connector.handle, concurrency=settings.concurrency,
        wait_s=settings.flush_wait_s, commit_interval_s=settings.commit_interval_s,
    )  # fmt: skip
    consumer.subscribe([topics.request(settings.institution)], listener=flow)
    await consumer.start()
    stopping = stop_requested()
    runner = await serve_web(connector, settings, consumer, flow, view)
    log.info("answering %s", topics.request(settings.institution))
    try:
        await flow.run(stopping)
    finally:
        await consumer.stop()
        await connector.close()
        await connector.producer.stop()
        await view.stop()
        with contextlib.suppress(Exception):
            await runner.cleanup()
