"""One ingress record in, every record it causes out: validate ▸ route ▸ transform ▸ fan out.

:class:`Pipeline` ties the pure stages to the live registry view, the schema store, the bus
signing key and the duplicate window. It never sends anything itself: ``handle`` returns the
records to produce (deliveries or a rejection, plus audit records), and the agent acks the
ingress record only after all of them were acknowledged by the broker.

A fault in one agreement (a pinned schema version the registry lacks, a delivery schema it
refuses, a failing transformation) is that agreement's alone: the others still receive the
event, and the failed delivery becomes an ``internal`` copy of the ingress record on
``esb.rejected.<publisher>`` naming the agreement (``esb_subscription``) with a replay claim
signed by the bus (:mod:`streams.pipeline.replay`), plus an audit record. An unreachable
registry is not a fault: ``handle`` raises and the agent retries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import fastavro

from streams.audit.chain import SUBJECT_KEY_PURPOSE, AuditChain, subject_digest
from streams.contract import topics
from streams.contract.codec import (
    HEADER_SIZE,
    RegistryUnavailableError,
    SchemaStore,
    WriterSchema,
    encode,
    schema_id_of,
)
from streams.contract.envelope import JSON_CONTENT_TYPE, Envelope
from streams.contract.jsonavro import to_json_bytes
from streams.contract.reasons import MAX_DETAIL, EventError, Reason
from streams.contract.signing import PrivateKey
from streams.contract.tracecontext import TraceParent, retraced, trace_headers
from streams.pipeline.calls import Calls
from streams.pipeline.duplicates import DuplicateWindow, SeenEvents
from streams.pipeline.replay import replay_claim, replay_headers
from streams.pipeline.routing import delivery_name, delivery_schema, minimise, resolve, route
from streams.pipeline.validation import (
    OPERATOR,
    Directory,
    IngressRecord,
    Limits,
    ValidEvent,
    publisher_of,
    validate,
)
from streams.registry.model import Subscription
from streams.registry.view import RegistryView

log = logging.getLogger(__name__)
# Enough of an error's text to act on; no more (it goes back to the publisher's topic).


@dataclass(frozen=True, slots=True)
class Output:
    """A record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """One agreement the bus could not serve an event to (the bus's fault)."""

    subscription: str
    subscriber: str
    reason: Reason = Reason.INTERNAL


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one ingress record, and the records to produce for it."""

    outputs: list[Output]
    publisher: str
    event_type: str
    reason: Reason | None = None
    subscribers: tuple[str, ...] = ()
    failures: tuple[DeliveryFailure, ...] = ()
    # Requests and answers (streams.pipeline.calls): the api code, what became of the call
    # (routed, refused, answered, provider-error, answer-refused) and, for an answer, the
    # time since the request was made.
    api: str = ""
    call: str = ""
    round_trip_s: float | None = None


@dataclass(frozen=True)
class BusKey:
    """The key the bus re-signs deliveries with."""

    key_id: str
    key: PrivateKey


class Pipeline:
    """Validation, routing and transformation of ingress records."""

    def __init__(
        self,
        view: RegistryView,
        schemas: SchemaStore,
        bus_key: BusKey,
        chain: AuditChain,
        limits: Limits | None = None,
        recent: SeenEvents | None = None,
    ) -> None:
        self.view = view
        self.schemas = schemas
        self.bus_key = bus_key
        self.chain = chain
        self.limits = limits or Limits()
        self.recent = recent or DuplicateWindow()
        self._pinned: dict[tuple[str, int], tuple[dict[str, Any], Any]] = {}
        self._delivery_ids: dict[tuple[str, str, int | str], tuple[int, Any]] = {}
        self._agreement_json: dict[int, tuple[Subscription, str]] = {}
        # Business keys go to the audit log keyed-hashed (streams.trace finds them by it).
        self._subject_key = bus_key.key.derive_key(SUBJECT_KEY_PURPOSE)
        self.calls = Calls(self)
        self._directory: tuple[tuple[int, frozenset[str], frozenset[str]], Directory] | None = None

    async def writer_of(self, record: IngressRecord) -> WriterSchema | None:
        """The registered schema of the record's value (None if the registry has no such id).

        Raises:
            RegistryUnavailableError: the schema registry cannot be asked.
            EventError: the value is not in the wire format.
        """
        if record.value is None or len(record.value) < HEADER_SIZE:
            return None
        try:
            return await self.schemas.writer_schema(schema_id_of(record.value))
        except EventError as error:
            if error.reason is not Reason.UNKNOWN_SCHEMA_ID:
                raise
            return None

    def directory(self) -> Directory:
        """The registry facts validation needs, from the live view (made again only when the
        view changed: ``withheld`` alone walks every unreadable record)."""
        view = self.view
        stamp = (view.version, view.gateway_keys, view.refused_keys)
        if self._directory is None or self._directory[0] != stamp:
            self._directory = (
                stamp,
                Directory(
                    event_types=view.event_types,
                    key_owners=view.key_owners,
                    keyring=view.keyring,
                    gateway_keys=view.gateway_keys,
                    refused_keys=view.refused_keys,
                    withheld=view.withheld,
                ),
            )
        return self._directory[1]

    async def handle(self, record: IngressRecord, now: dt.datetime | None = None) -> Outcome:
        """Process one ingress record; never raises for bad input (it becomes a rejection).

        Raises:
            RegistryUnavailableError: the schema registry cannot be asked; retry later.
        """
        now = now or dt.datetime.now(dt.UTC)
        call = self.calls.kind_of(record)
        if call is not None:
            try:
                service, part, api_code = call
                if part == "request" or service is None:
                    return await self.calls.request(record, service, api_code, now)
                return await self.calls.answer(record, service, now)
            except RegistryUnavailableError:
                raise
            except Exception as error:  # a poison record must not stall the partition
                log.exception("unexpected failure on %s[%d]@%d", *record.position)
                return self.reject(
                    record, EventError(Reason.INVALID_PAYLOAD, f"processing failed: {error}"), now
                )
        try:
            writer = None
            if record.value is not None:
                try:
                    writer = await self.schemas.writer_schema(schema_id_of(record.value))
                except EventError as error:
                    if error.reason is not Reason.UNKNOWN_SCHEMA_ID:
                        raise
            directory = self.directory()
            event = validate(record, directory, writer, now, self.limits)
            replay_for = replay_claim(
                record.headers,
                event.publisher,
                event.envelope.id,
                record.value or b"",
                directory.keyring,
                directory.key_owners,
                OPERATOR,
            )
            if replay_for is None:
                self.recent.check(event.envelope.source, event.envelope.id, record.position, now)
            # A replay the bus signed is a second read of an event it already accepted: it
            # goes to the one agreement that missed it, past the duplicate window.
            subscriptions = [
                s
                for s in route(event.envelope.type, event.payload, self.view.subscriptions.values())
                if replay_for is None or s.id == replay_for
            ]
        except EventError as error:
            return self.reject(record, error, now)
        except RegistryUnavailableError:
            raise
        except Exception as error:  # a poison record must not stall the partition
            log.exception("unexpected failure on %s[%d]@%d", *record.position)
            return self.reject(
                record, EventError(Reason.INVALID_PAYLOAD, f"processing failed: {error}"), now
            )
        deliveries: list[Output] = []
        failed: list[tuple[Subscription, Exception]] = []
        for subscription in subscriptions:
            try:
                deliveries.append(await self.deliver(event, subscription))
            except RegistryUnavailableError:
                raise  # nothing was produced yet: the whole event is retried
            except Exception as fault:  # this agreement's fault, not the event's
                failed.append((subscription, fault))
        delivered = {s.id for s in subscriptions} - {s.id for s, _ in failed}
        subscribers = tuple(dict.fromkeys(s.subscriber for s in subscriptions if s.id in delivered))
        outputs = [*deliveries]
        for subscription, cause in failed:
            outputs += self.fail(record, event, subscription, cause, now)
        audit = self.audit_of(
            "routed" if subscriptions else "received", record, event.envelope, now, subscribers,
            agreements=tuple(s.id for s in subscriptions if s.id in delivered),
        )  # fmt: skip
        return Outcome(
            [*outputs, audit],
            event.publisher,
            event.envelope.type,
            None,
            subscribers,
            tuple(DeliveryFailure(s.id, s.subscriber) for s, _ in failed),
        )

    def replay_claim(self, record: IngressRecord, agreement: str) -> tuple[tuple[str, bytes], ...]:
        """The bus-signed headers that let ``agreement`` alone receive ``record``'s event again
        (on a copy of ``record`` set aside for an operator to replay)."""
        event_id = next((v.decode() for k, v in record.headers if k == "ce_id" and v), "")
        return replay_headers(
            self.bus_key.key_id,
            self.bus_key.key,
            publisher_of(record.topic),
            event_id,
            agreement,
            record.value or b"",
        )

    def fail(
        self,
        record: IngressRecord,
        event: ValidEvent,
        subscription: Subscription,
        error: Exception,
        now: dt.datetime,
    ) -> list[Output]:
        """An ``internal`` failure of one agreement: a replayable copy and an audit record.

        The copy of the ingress record goes to ``esb.rejected.<publisher>`` with
        ``esb_reason=internal``, ``esb_subscription`` and the bus's replay claim, so an
        operator can send it again to this agreement alone (``govesb rejected replay``).
        """
        if isinstance(error, LookupError):  # a known configuration fault: no traceback
            log.warning("agreement %s cannot receive %s: %s", subscription.id, event.envelope.id,
                        error)  # fmt: skip
        else:
            # called after the except block: the traceback is passed on
            log.error(
                "agreement %s failed on %s[%d]@%d",
                subscription.id,
                *record.position,
                exc_info=error,
            )
        detail = f"agreement {subscription.id}: processing failed: {error}"[:MAX_DETAIL]
        headers = (
            *record.headers,
            ("esb_reason", str(Reason.INTERNAL).encode()),
            ("esb_detail", detail.encode()),
            ("esb_source", f"{record.topic}[{record.partition}]@{record.offset}".encode()),
            ("esb_subscription", subscription.id.encode()),
            *replay_headers(
                self.bus_key.key_id,
                self.bus_key.key,
                event.publisher,
                event.envelope.id,
                subscription.id,
                record.value or b"",
            ),
        )
        copy = Output(topics.rejected(event.publisher), record.key, record.value, headers)
        audit = self.audit_of(
            "failed",
            record,
            event.envelope,
            now,
            (subscription.subscriber,),
            reason=Reason.INTERNAL,
            subscription=subscription.id,
        )
        return [copy, audit]

    def reject(self, record: IngressRecord, error: EventError, now: dt.datetime) -> Outcome:
        """The record, as it came, to ``esb.rejected.<publisher>`` with the reason."""
        publisher = publisher_of(record.topic)
        try:
            envelope: Envelope | None = Envelope.from_headers(record.headers)
        except EventError:
            envelope = None
        headers = (
            *record.headers,
            ("esb_reason", str(error.reason).encode()),
            ("esb_detail", error.detail[:MAX_DETAIL].encode()),
            ("esb_source", f"{record.topic}[{record.partition}]@{record.offset}".encode()),
        )
        rejected = Output(topics.rejected(publisher), record.key, record.value, headers)
        audit = self.audit_of(
            "rejected", record, envelope, now, (), reason=error.reason, detail=error.detail
        )
        return Outcome(
            [rejected, audit],
            publisher,
            envelope.type if envelope else "",
            error.reason,
        )

    async def deliver(self, event: ValidEvent, subscription: Subscription) -> Output:
        """The event as ``subscription`` may see it, re-encoded and re-signed by the bus.

        Kafka agreements get Avro under the agreement's delivery schema; HTTP agreements get
        the JSON body the endpoint will receive, signed here so the sink forwards it as is.
        """
        envelope = event.envelope
        reader = await self._reader_schema(envelope.type, subscription, event)
        # Validation decoded the payload with the writer's schema: only a pinned older
        # version needs reading again (schema resolution).
        decoded = (
            event.payload
            if reader is event.writer.parsed
            else resolve(event.record.value or b"", event.writer.parsed, reader)
        )
        payload = minimise(decoded, subscription)
        content_type = None
        if subscription.delivery == "http":
            value = to_json_bytes(payload)
            content_type = JSON_CONTENT_TYPE
        else:
            schema_id, parsed = await self._delivery_schema(envelope.type, subscription, event)
            value = encode(schema_id, parsed, payload)
        signature = envelope.signature_by(self.bus_key.key, value)
        headers = (
            *envelope.signed_headers(self.bus_key.key_id, signature, content_type),
            ("esb_subscription", subscription.id.encode()),
        )
        return Output(
            topics.deliver(subscription.subscriber), envelope.subject.encode(), value, headers
        )

    async def _reader_schema(
        self, event_type: str, subscription: Subscription, event: ValidEvent
    ) -> Any:
        if subscription.schema_version == "latest":
            return event.writer.parsed
        key = (event_type, subscription.schema_version)
        if key not in self._pinned:
            text = await self.schemas.version_text(event_type, subscription.schema_version)
            raw = json.loads(text)
            self._pinned[key] = (raw, fastavro.parse_schema(raw))  # parsed once per version
        return self._pinned[key][1]

    async def _delivery_schema(
        self, event_type: str, subscription: Subscription, event: ValidEvent
    ) -> tuple[int, Any]:
        version = subscription.schema_version
        # Keyed by the whole agreement: a change applied to the registry gets a new schema.
        # (The registry view holds one object per agreement until it changes, so its JSON is
        # computed once per object, not per delivery.)
        known = self._agreement_json.get(id(subscription))
        if known is None or known[0] is not subscription:
            known = self._agreement_json[id(subscription)] = (
                subscription,
                subscription.model_dump_json(),
            )
        key = (known[1], event_type, event.writer.id if version == "latest" else version)
        cached = self._delivery_ids.get(key)
        if cached is not None:
            return cached
        source = (
            self._pinned[(event_type, version)][0]
            if version != "latest"
            else json.loads(event.writer.text)
        )
        schema = delivery_schema(source, event_type, subscription)
        schema_id = await self.schemas.register(delivery_name(subscription.id, event_type), schema)
        entry = (schema_id, fastavro.parse_schema(schema))
        self._delivery_ids[key] = entry
        return entry

    def audit_of(
        self,
        outcome: str,
        record: IngressRecord,
        envelope: Envelope | None,
        now: dt.datetime,
        subscribers: tuple[str, ...],
        reason: Reason | None = None,
        subscription: str | None = None,
        agreements: tuple[str, ...] = (),
        detail: str | None = None,
        subject: str | None = None,
    ) -> Output:
        """The audit record of ``outcome``; ``subject``: the business key, when it is not
        ``ce_subject`` (a request's is its id; the data tracker needs the NIN asked about)."""
        key, value = self.chain.append(
            outcome=outcome,
            event_id=envelope.id if envelope else None,
            publisher=publisher_of(record.topic),
            event_type=envelope.type if envelope else None,
            payload_sha256=hashlib.sha256(record.value).hexdigest() if record.value else None,
            subscribers=subscribers,
            reason=str(reason) if reason else None,
            source=record.position,
            time=now,
            subscription=subscription,
            subject=subject_digest(self._subject_key, subject)
            if subject
            else subject_digest(self._subject_key, envelope.subject)
            if envelope and envelope.subject
            else None,
            agreements=agreements,
            detail=detail,
        )
        return Output(topics.AUDIT, key, value)


def traced(outcome: Outcome, hop: TraceParent, creation: TraceParent) -> Outcome:
    """``outcome`` with every output (deliveries, rejections, audit records) carrying the
    worker's hop as ``traceparent`` and the event's creation context as ``ce_traceparent``,
    in place of the trace headers a copied ingress record had."""
    trace = trace_headers(hop, creation)
    return replace(
        outcome,
        outputs=[
            Output(o.topic, o.key, o.value, retraced(o.headers, trace) if o.headers else trace)
            for o in outcome.outputs
        ],
    )
