"""A ``Gateway`` served over real HTTP on a free port, producing to a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from connectors.gateway.app import Gateway
from connectors.gateway.auth import Authenticator
from deploy.kafka.launcher import free_port
from deploy.worker import DEMO_GATEWAY_KEY, DEMO_GATEWAY_KEY_ID
from streams.contract.codec import SchemaStore
from streams.contract.signing import load_private_key
from streams.registry.view import RegistryView
from streams.settings import KafkaSettings
from tests.unit.pipeline_fixtures import CATALOG

AUTH_OPTIONS = set(inspect.signature(Authenticator).parameters) - {"clients"}


@contextlib.asynccontextmanager
async def served_gateway(
    view: RegistryView, kafka: str, registry: str, clients: dict[str, str], **options: Any
) -> AsyncIterator[tuple[int, Gateway]]:
    """The port and the gateway (the demo bus key, the test catalogue; ``options`` are the
    ``Gateway``'s and its ``Authenticator``'s limits and timeouts), until the block ends."""
    producer = AIOKafkaProducer(**KafkaSettings(bootstrap_servers=kafka).durable_producer_options())
    await producer.start()
    limits = {name: options.pop(name) for name in AUTH_OPTIONS & set(options)}
    state = Gateway(
        view=view,
        catalog=CATALOG,
        schemas=SchemaStore(AsyncSchemaRegistryClient({"url": registry})),
        producer=producer,
        bus_key=load_private_key(DEMO_GATEWAY_KEY.read_text()),
        bus_key_id=DEMO_GATEWAY_KEY_ID,
        auth=Authenticator(clients, **limits),
        **options,
    )
    runner = web.AppRunner(state.application())
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield port, state
    finally:
        await runner.cleanup()
        # A test may have stopped the broker: the producer cannot flush then, so bounded.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(producer.stop(), 5)
