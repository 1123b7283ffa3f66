"""``govesb connect gateway``: the gateway process (HTTP server, producer, registry view)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiokafka import AIOKafkaProducer

from connectors.gateway.app import Gateway
from connectors.gateway.auth import Authenticator
from connectors.gateway.calls import HeldCalls, ReplyReader
from connectors.gateway.requests import attach
from connectors.gateway.tickets import TicketBook
from connectors.serving import serve, stop_requested
from streams.audit.chain import new_chain
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore
from streams.registry.view import RegistryView
from streams.supervising import ProcessSlot
from streams.tracing import GATEWAY, Tracing


class AccessLog(AbstractAccessLogger):
    """One line per request: method, path, status, duration.

    Never headers, query strings or bodies: those carry tokens, secrets and personal data.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log ``request`` and the status it got."""
        self.logger.info("%s %s %d %.3fs", request.method, request.path, response.status, time)


async def run_gateway(settings: Any, slot: ProcessSlot | None = None) -> None:
    """``govesb connect gateway``: serve until SIGTERM/SIGINT.

    ``slot``: this is process ``slot.index`` of ``--processes N``
    (:mod:`connectors.gateway.processes`): it listens on ``web_port`` with ``SO_REUSEPORT``
    beside its siblings, serves its own ``/health`` and ``/metrics`` on
    ``admin_port(settings, slot.index)`` too, and its ``/health`` has a ``process`` check.
    """
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    from streams.contract.signing import load_private_key

    view = RegistryView(settings.kafka, refused_keys=settings.refused_key_ids)
    await view.start()
    producer = AIOKafkaProducer(**settings.kafka.durable_producer_options(linger_ms=1))
    await producer.start()
    gateway = Gateway(
        view=view,
        catalog=Catalog.load(settings.catalog),
        schemas=SchemaStore(AsyncSchemaRegistryClient(settings.schema_registry.client_config())),
        producer=producer,
        bus_key=load_private_key(settings.signing_key_file.read_bytes()),
        bus_key_id=settings.signing_key_id,
        auth=Authenticator(
            {k.lower(): v.get_secret_value() for k, v in settings.clients.items()},
            rate_per_s=settings.rate_per_s,
            burst=settings.burst,
            token_ttl_s=settings.token_ttl_s,
            max_live_tokens=settings.max_live_tokens,
            token_failures_per_client=settings.token_failures_per_client,
            token_failures_per_ip=settings.token_failures_per_ip,
            tokens_per_client=settings.tokens_per_client,
            token_limit_period_s=settings.token_limit_period_s,
            token_key=(
                settings.token_key.get_secret_value().encode() if settings.token_key else None
            ),
        ),
        max_body_bytes=settings.max_body_bytes,
        produce_timeout_s=settings.produce_timeout_s,
        tracing=Tracing(settings.tracing, GATEWAY),
    )
    # Answers are read before the first request is taken, so none is missed.
    calls = ReplyReader(settings.kafka, view, HeldCalls(), settings.signing_key_id)
    tickets = TicketBook(settings.kafka)
    await calls.start()
    await tickets.start()
    attach(gateway, calls, tickets, new_chain("gateway"))
    runners: list[web.AppRunner] = []
    if slot is not None:
        gateway.checks["process"] = slot.health
        admin = web.Application()
        admin.router.add_get("/health", gateway.health)
        admin.router.add_get("/metrics", gateway.metrics_page)
        port = admin_port(settings, slot.index)
        runners.append(await serve(admin, settings.web_host, port, access_log=None))
    stopping = stop_requested()
    api = gateway.application()
    shared = slot is not None  # SO_REUSEPORT: its siblings listen on the same port
    site = serve(
        api, settings.web_host, settings.web_port, reuse_port=shared, access_log_class=AccessLog
    )
    runners.append(await site)
    try:
        await stopping.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        with contextlib.suppress(TimeoutError):  # bounded: a dead broker cannot be flushed
            await asyncio.wait_for(producer.stop(), settings.produce_timeout_s)
        await tickets.stop()
        await calls.stop()
        await view.stop()
        await asyncio.to_thread(gateway.tracing.shutdown)  # the last spans exported


def admin_port(settings: Any, index: int) -> int:
    """Where process ``index`` of ``--processes N`` serves its own ``/health`` and ``/metrics``:
    ``web_port + 1 + index`` (the shared ``web_port`` answers for whichever process took the
    connection)."""
    return int(settings.web_port) + 1 + index
