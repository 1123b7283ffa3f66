"""Requester SDK: how an institution's system calls another's API over Kafka.

    async with Requester.connect(institution="moh", system="gothomis", key_id=..., key=...,
                                 kafka=..., schema_registry=...) as requester:
        answer = await requester.request("VERIFY_NIN", {"nin": "19900114141010000125"})
        if answer.success:
            print(answer.body)          # the fields moh's grant lets it see
        else:
            print(answer.status, answer.reason, answer.message)

``request`` validates the body against the service's request schema, encodes it, signs it
with the institution's key and publishes it to ``esb.ingress.<institution>`` (acks=all); then
it waits for the reply on ``esb.reply.<institution>`` whose ``ce_correlationid`` is the
request id, and checks that the bus signed it. Replies are read by every requester of the
institution (no consumer group: each one picks its own request ids), from where the topic
ended when the requester started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from streams.client.answering import bus_keys
from streams.client.consuming import assign_topics
from streams.client.lifecycle import Lifecycle
from streams.client.publisher import Publisher, PublishError, checked_record
from streams.contract import requests, topics
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore
from streams.contract.reasons import Reason
from streams.contract.requests import Status
from streams.contract.signing import PrivateKey, SigningError, verify_event
from streams.registry.view import RegistryView
from streams.settings import DEFAULT_CATALOG, KafkaSettings, SchemaRegistrySettings

log = logging.getLogger(__name__)
TIMED_OUT = "timed-out"


class RequestError(ValueError):
    """The request cannot be sent as given (unknown api code, body not of the schema)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back: ``success`` (answered), the answer ``body`` the grant lets the
    requester see, or the ``status`` (``provider-error``, ``refused``, ``timed-out``) with
    its ``reason`` code and a ``message``; ``late`` when answered past the deadline."""

    success: bool
    request_id: str
    body: dict[str, Any] | None
    status: str
    reason: str | None = None
    message: str = ""
    late: bool = False


def _header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    value = requests.header(record.headers, name)
    return value.decode(errors="replace") if value is not None else None


def read_reply(record: ConsumerRecord[bytes, bytes], request_id: str) -> Answer:
    """The :class:`Answer` a reply record carries."""
    status = _header(record, requests.STATUS_HEADER) or ""
    body: dict[str, Any] | None = None
    if status == Status.ANSWERED and record.value:
        parsed = json.loads(record.value)
        body = parsed if isinstance(parsed, dict) else None
    return Answer(
        success=status == Status.ANSWERED,
        request_id=request_id,
        body=body,
        status=status,
        reason=_header(record, "esb_reason"),
        message=_header(record, requests.MESSAGE_HEADER) or _header(record, "esb_detail") or "",
        late=_header(record, requests.LATE_HEADER) == "1",
    )


class Requester(Lifecycle):
    """Sends one institution system's requests and waits for their answers."""

    def __init__(
        self,
        *,
        institution: str,
        system: str,
        key_id: str,
        key: PrivateKey,
        catalog: Catalog,
        schemas: SchemaStore,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        view: RegistryView,
    ) -> None:
        self.institution = institution
        self.system = system
        self._publisher = Publisher(
            institution=institution, system=system, key_id=key_id, key=key, catalog=catalog,
            schemas=schemas, producer=producer,
        )  # fmt: skip
        self._catalog = catalog
        self._schemas = schemas
        self._producer = producer
        self._consumer = consumer
        self._view = view
        self._waiting: dict[str, asyncio.Future[Answer]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def connect(
        cls,
        *,
        institution: str,
        system: str,
        key_id: str,
        key: PrivateKey,
        kafka: KafkaSettings,
        schema_registry: SchemaRegistrySettings,
        catalog: Catalog | None = None,
        view: RegistryView | None = None,
    ) -> Requester:
        """A requester with its own producer (acks=all, idempotent), reply reader and
        registry view (for the bus's keys and the services' deadlines)."""
        return cls(
            institution=institution, system=system, key_id=key_id, key=key,
            catalog=catalog or Catalog.load(DEFAULT_CATALOG),
            schemas=SchemaStore(AsyncSchemaRegistryClient(schema_registry.client_config())),
            producer=AIOKafkaProducer(**kafka.durable_producer_options(linger_ms=1)),
            consumer=AIOKafkaConsumer(**kafka.aiokafka_options(), group_id=None,
                                      enable_auto_commit=False),
            view=view or RegistryView(kafka),
        )  # fmt: skip

    async def start(self) -> None:
        """Load the registry view, connect, and start reading replies from the topic's end.

        Raises:
            RequestError: the institution has no reply topic (it is granted no API).
        """
        await self._view.start()
        await self._publisher.start()
        await self._consumer.start()
        try:
            await assign_topics(
                self._consumer, [topics.reply(self.institution)], from_beginning=False
            )
        except LookupError:
            raise RequestError(
                f"{topics.reply(self.institution)} does not exist: {self.institution} is "
                "granted no API in the registry"
            ) from None
        for partition in self._consumer.assignment():  # fix the start now, not at first fetch
            await self._consumer.position(partition)
        self._reader = asyncio.create_task(self._read_replies())

    async def stop(self) -> None:
        """Stop reading, flush and close."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._consumer.stop()
        await self._publisher.stop()
        await self._view.stop()

    async def send(self, api_code: str, body: Mapping[str, Any]) -> str:
        """Publish one request; return its id once the broker acknowledged it.

        Raises:
            RequestError: an api code the catalogue does not know, a body not of its schema.
        """
        service = self._catalog.services.get(api_code)
        if service is None:
            raise RequestError(f"unknown api code {api_code!r}; see schemas/catalog.yaml")
        try:
            checked_record(service.request, body)  # before the registry is asked
            request_id = requests.new_request_id()
            prepared = self._publisher.prepare(
                service.request, await self._schemas.id_for(service.request), body,
                event_id=request_id, subject=request_id,
            )  # fmt: skip
        except PublishError as error:
            raise RequestError(str(error)) from None
        headers = [*prepared.headers, (requests.API_HEADER, api_code.encode())]
        self._waiting[request_id] = asyncio.get_running_loop().create_future()
        try:
            await self._producer.send_and_wait(
                prepared.topic, prepared.value, key=prepared.key, headers=headers
            )
        except BaseException:
            self._waiting.pop(request_id, None)
            raise
        return request_id

    def expect(self, request_id: str) -> None:
        """Wait for the reply to ``request_id``, a request sent by other means (e.g. a raw
        producer); then :meth:`wait` for it."""
        self._waiting.setdefault(request_id, asyncio.get_running_loop().create_future())

    async def wait(self, request_id: str, timeout: float) -> Answer:  # noqa: ASYNC109 - the API
        """The answer to ``request_id``, or a ``timed-out`` one after ``timeout`` seconds."""
        future = self._waiting.get(request_id)
        if future is None:
            raise RequestError(f"{request_id} was not sent by this requester")
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return Answer(False, request_id, None, TIMED_OUT, Reason.TIMED_OUT.value,
                          f"no answer within {timeout:g} s")  # fmt: skip
        finally:
            self._waiting.pop(request_id, None)

    async def request(
        self,
        api_code: str,
        body: Mapping[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 - part of the API
    ) -> Answer:
        """Send a request and wait for its answer; ``timeout`` defaults to the service's
        deadline plus a second (the bus answers ``timed-out`` by then)."""
        request_id = await self.send(api_code, body)
        if timeout is None:
            service = self._view.services.get(api_code)
            timeout = (service.deadline_s if service else 10.0) + 1.0
        return await self.wait(request_id, timeout)

    async def _read_replies(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    self._reply(record)

    def _reply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        request_id = _header(record, "ce_correlationid") or ""
        future = self._waiting.get(request_id)
        if future is None or future.done():
            return
        names = ("ce_id", "ce_source", "ce_type", "ce_time", "ce_sigkeyid", "ce_signature")
        headers = {name: _header(record, name) or "" for name in names}
        if headers["ce_sigkeyid"] not in bus_keys(self._view):
            log.warning("reply to %s not signed by the bus: ignored", request_id)
            return
        try:
            verify_event(
                self._view.keyring, headers["ce_sigkeyid"], headers["ce_signature"],
                headers["ce_id"], headers["ce_source"], headers["ce_type"], headers["ce_time"],
                record.value or b"",
            )  # fmt: skip
        except SigningError:
            log.warning("reply to %s: the bus's signature does not verify; ignored", request_id)
            return
        try:
            future.set_result(read_reply(record, request_id))
        except ValueError:
            log.warning("reply to %s is not JSON: ignored", request_id)
