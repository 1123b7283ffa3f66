"""Answering requests on the bus: the answer event of the wire contract, and the Kafka-native
provider helper.

    async def tin_status(body: dict) -> dict:
        return {"tin": body["tin"], "registered": True, ...}

    async with Provider.connect(institution="tra", system="itax", key_id=..., key=...,
                                kafka=..., schema_registry=..., handlers={"TIN_STATUS": tin_status}
                                ) as provider:
        await provider.run(stopping)

``Provider`` reads ``esb.request.<institution>`` in the group ``govesb-provider-<institution>``,
checks each request's bus signature, calls the api code's handler with the request body (JSON form),
validates what it returns against the service's response schema and answers on
``esb.ingress.<institution>``, signed with the institution's own key, with the request's ticket. A
handler that raises :class:`ProviderFailure` (or anything else) gives a ``provider-error`` answer. A
request read after its ticket's last moment (a provider catching up after an outage) is not
answered: nobody waits for it and the bus would refuse the answer. Offsets are committed once the
batch's answers are acknowledged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

from streams.client.lifecycle import Lifecycle
from streams.client.publisher import PublishError, checked_record
from streams.contract import requests, topics
from streams.contract.catalog import Catalog
from streams.contract.codec import RegistryUnavailableError, SchemaStore, encode
from streams.contract.envelope import Envelope, format_time, source_for
from streams.contract.jsonavro import JsonAvroError, from_json, to_json
from streams.contract.reasons import EventError, Reason
from streams.contract.requests import Status, TicketError, read_ticket
from streams.contract.signing import PrivateKey, SigningError, verify_event
from streams.pipeline.validation import OPERATOR, VIA_GATEWAY, VIA_HEADER
from streams.registry.view import RegistryView
from streams.retrying import until_available
from streams.settings import DEFAULT_CATALOG, KafkaSettings, SchemaRegistrySettings

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class AnswerEvent:
    """The answer as a Kafka record for ``esb.ingress.<provider>``."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def answer_event(
    request: Envelope,
    request_headers: Iterable[tuple[str, bytes | None]],
    *,
    provider: str,
    system: str,
    api_code: str,
    response_type: str,
    status: Status,
    value: bytes,
    reason: Reason | None,
    message: str,
    key_id: str,
    key: PrivateKey,
    via_gateway: bool,
    now: dt.datetime,
) -> AnswerEvent:
    """The answer event of the wire contract (item 3): ``ce_id`` = ``answer_id(request id)``,
    ``ce_correlationid`` and ``ce_subject`` and the key = the request id, the request's
    ticket headers unchanged, ``esb_status`` (with ``esb_reason``/``esb_message`` when an
    error), signed by ``key`` over ``canonical_bytes(id, source, type, time, value)``;
    ``via_gateway``: an edge process of the bus signs it (``esb_via: gateway``)."""
    request_id = request.id
    envelope = Envelope(
        id=requests.answer_id(request_id),
        source=source_for(provider, system),
        type=response_type,
        time=format_time(now),
        subject=request_id,
        correlation_id=request_id,
    )
    headers = envelope.sealed(key_id, key, value).to_headers()
    given = list(request_headers)
    headers += [(name, requests.header(given, name) or b"") for name in requests.TICKET_HEADERS]
    headers += [(requests.API_HEADER, api_code.encode()), (requests.STATUS_HEADER, status.encode())]
    if reason is not None:
        headers.append(("esb_reason", reason.value.encode()))
    if message:
        headers.append((requests.MESSAGE_HEADER, message[: requests.MAX_MESSAGE].encode()))
    if via_gateway:
        headers.append((VIA_HEADER, VIA_GATEWAY))
    return AnswerEvent(topics.ingress(provider), request_id.encode(), value, headers)


class ProviderFailure(Exception):
    """Raised by a handler that cannot answer: the requester gets ``provider-error`` with
    this message (keep it short and free of personal data)."""


def bus_keys(view: RegistryView) -> set[str]:
    """Key ids of the bus (the operator's), but its gateway keys: the keys requests and
    replies are re-signed with."""
    return {k for k, owner in view.key_owners.items() if owner == OPERATOR} - view.gateway_keys


def signed_by_bus(record: ConsumerRecord[bytes, bytes], view: RegistryView) -> Envelope | None:
    """The record's envelope if a key of the bus signed it, else None."""
    try:
        envelope = Envelope.from_headers(record.headers, accept=("application/avro",
                                                                 "application/json"))  # fmt: skip
        if envelope.sig_key_id not in bus_keys(view):
            return None
        verify_event(
            view.keyring, envelope.sig_key_id or "", envelope.signature or "", envelope.id,
            envelope.source, envelope.type, envelope.time, record.value or b"",
        )  # fmt: skip
    except (EventError, SigningError):
        return None
    return envelope


class Provider(Lifecycle):
    """A Kafka-native provider: answers its institution's requests with async handlers."""

    def __init__(
        self,
        *,
        institution: str,
        system: str,
        key_id: str,
        key: PrivateKey,
        handlers: Mapping[str, Handler],
        catalog: Catalog,
        schemas: SchemaStore,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        view: RegistryView,
    ) -> None:
        self.institution = institution
        self.system = system
        self._key_id = key_id
        self._key = key
        self._handlers = dict(handlers)
        self._catalog = catalog
        self._schemas = schemas
        self._producer = producer
        self._consumer = consumer
        self._view = view
        self.answered = 0
        self.expired = 0

    @classmethod
    def connect(
        cls,
        *,
        institution: str,
        system: str,
        key_id: str,
        key: PrivateKey,
        handlers: Mapping[str, Handler],
        kafka: KafkaSettings,
        schema_registry: SchemaRegistrySettings,
        catalog: Catalog | None = None,
        view: RegistryView | None = None,
    ) -> Provider:
        """A provider with its own consumer (group ``govesb-provider-<institution>``),
        idempotent producer and registry view."""
        return cls(
            institution=institution, system=system, key_id=key_id, key=key,
            handlers=handlers, catalog=catalog or Catalog.load(DEFAULT_CATALOG),
            schemas=SchemaStore(AsyncSchemaRegistryClient(schema_registry.client_config())),
            producer=AIOKafkaProducer(**kafka.durable_producer_options(linger_ms=1)),
            consumer=AIOKafkaConsumer(
                **kafka.aiokafka_options(), group_id=topics.provider_group(institution),
                enable_auto_commit=False, auto_offset_reset="earliest",
            ),
            view=view or RegistryView(kafka),
        )  # fmt: skip

    async def start(self) -> None:
        """Load the registry view, connect, join the group."""
        await self._view.start()
        await self._producer.start()
        self._consumer.subscribe([topics.request(self.institution)])
        await self._consumer.start()

    async def stop(self) -> None:
        """Leave the group, flush and close."""
        await self._consumer.stop()
        await self._producer.stop()
        await self._view.stop()

    async def run(self, stopping: asyncio.Event) -> None:
        """Answer requests until ``stopping`` is set."""
        while not stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=200, max_records=100)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                continue
            acks = await asyncio.gather(*(self.answer(record) for record in records))
            await asyncio.gather(*(ack for ack in acks if ack is not None))
            await self._consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs})
            self.answered += sum(ack is not None for ack in acks)

    async def answer(self, record: ConsumerRecord[bytes, bytes]) -> asyncio.Future[Any] | None:
        """Answer one request; the future of its answer's acknowledgement (None: a record the
        bus did not route, which has nobody to answer)."""
        envelope = signed_by_bus(record, self._view)
        try:
            ticket = read_ticket(record.headers, self._view.keyring, bus_keys(self._view))
        except TicketError:
            envelope = None
        if envelope is not None and (
            ticket.provider != self.institution or ticket.request_id != envelope.id
        ):
            envelope = None  # routed by the bus, but not to this provider nor this request
        service = self._catalog.services.get(ticket.api_code) if envelope else None
        if envelope is None or service is None:
            log.warning("request at %s[%d]@%d ignored: not routed by the bus",
                        record.topic, record.partition, record.offset)  # fmt: skip
            return None
        if time.time() * 1000 > ticket.until_ms:
            self.expired += 1  # the bus takes no answer to it any more: not worth computing
            return None
        status, value, reason, message = Status.ANSWERED, b"", None, ""
        handler = self._handlers.get(service.api_code)
        try:
            if handler is None:
                raise ProviderFailure(f"{service.api_code} is not served here")
            decoded = await until_available(
                lambda: self._schemas.decode(record.value or b""),
                RegistryUnavailableError, "schema registry", log,
            )  # fmt: skip
            body = await handler(to_json(decoded.record))
            answer = checked_record(service.response, from_json(service.response.schema, body))
            schema_id = await until_available(
                lambda: self._schemas.id_for(service.response),
                RegistryUnavailableError, "schema registry", log,
            )  # fmt: skip
            value = encode(schema_id, service.response.parsed, answer)
        except ProviderFailure as failure:
            status, reason, message = Status.PROVIDER_ERROR, Reason.PROVIDER_ERROR, str(failure)
        except (PublishError, JsonAvroError) as error:
            status, reason, message = Status.PROVIDER_ERROR, Reason.INVALID_ANSWER, str(error)
        except Exception as error:  # a handler's bug must not stop the provider
            log.exception("the %s handler failed", service.api_code)
            status, reason = Status.PROVIDER_ERROR, Reason.PROVIDER_ERROR
            message = f"the provider failed ({type(error).__name__})"
        event = answer_event(
            envelope, record.headers, provider=self.institution, system=self.system,
            api_code=service.api_code, response_type=service.response.name, status=status,
            value=value, reason=reason, message=message, key_id=self._key_id, key=self._key,
            via_gateway=False, now=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        ack: asyncio.Future[Any] = await self._producer.send(
            event.topic, event.value, key=event.key, headers=event.headers
        )
        return ack
