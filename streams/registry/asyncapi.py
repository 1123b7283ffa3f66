"""AsyncAPI 3.0 documents of the bus, generated from the catalogue and the registry. Pure.

``govesb catalog asyncapi`` writes them. The whole-bus view has one channel per topic family
(``esb.ingress.{institution}``, ``esb.deliver.{institution}``, ``esb.rejected.{institution}``,
``esb.dlq.{institution}``, ``esb.audit``) and every institution's operations; the view of one
institution has its own topics and only what its Kafka ACLs let it do (see
:mod:`streams.registry.acls`): send the event types it owns on its ingress topic, receive
under each of its agreements on its deliver topic (the fields delivered, masked or not, and
the purpose), and receive its rejections.

Messages carry the Avro schemas of ``schemas/`` as they are (Multi Format Schema Objects), the
CloudEvents headers, the business key (Kafka message binding), an example from
``schemas/samples.yaml``, and the personal-data fields (``x-govesb-pii`` and a field table in
the description). What a subscriber receives is the agreement's delivery schema, derived as the
pipeline derives it (:func:`streams.pipeline.routing.delivery_schema`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streams import __version__
from streams.contract import topics
from streams.contract.envelope import CONTENT_TYPE
from streams.pipeline.routing import delivery_name
from streams.registry import asyncapi_messages as messages
from streams.registry import asyncapi_parts as parts
from streams.registry.asyncapi_messages import DEAD_LETTER, REJECTED_RECORD, AsyncApiError
from streams.registry.model import BusRegistry, Institution, Subscription
from streams.settings import TopicSettings

ASYNCAPI_VERSION = "3.0.0"
SERVER = "govesb"
PLACEHOLDER_HOST = "kafka.govesb.example:9093"
PLACEHOLDER_REGISTRY = "https://schema-registry.govesb.example/apis/ccompat/v7"


#: AsyncAPI security scheme types of the SASL mechanisms the bus's clients support.
SASL_SCHEMES = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}


@dataclass(frozen=True)
class BusServer:
    """Where the bus is and how clients connect: the Kafka cluster and its schema registry.

    Only the mechanism is described, never a credential.
    """

    host: str = PLACEHOLDER_HOST
    schema_registry_url: str = PLACEHOLDER_REGISTRY
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None

    def describe(self) -> dict[str, Any]:
        """The Server Object."""
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        server: dict[str, Any] = {
            "host": self.host,
            "protocol": "kafka",
            "title": "GovESB Kafka cluster",
            "description": "Each institution connects as its own principal "
            "(`User:<institution>`); Kafka ACLs allow it only the operations below. "
            f"Security protocol: `{self.security_protocol}`"
            + (" (TLS: verify the brokers' certificates)." if tls else "."),
            "bindings": {
                "kafka": {
                    "schemaRegistryUrl": self.schema_registry_url,
                    # Any Confluent-compatible registry (Apicurio's ccompat API here) with
                    # Confluent's serdes and wire format.
                    "schemaRegistryVendor": "confluent",
                    "bindingVersion": parts.KAFKA_BINDING_VERSION,
                }
            },
        }
        if self.sasl_mechanism in SASL_SCHEMES:
            server["security"] = [parts.ref("components", "securitySchemes", "institution")]
        return server

    def security_schemes(self) -> dict[str, Any]:
        """The components' security schemes the server refers to."""
        if self.sasl_mechanism not in SASL_SCHEMES:
            return {}
        return {
            "institution": {
                "type": SASL_SCHEMES[self.sasl_mechanism],
                "description": f"SASL {self.sasl_mechanism}: the institution's id as user name "
                "and the password the operator issued (`KafkaUser` of `govesb registry export "
                "--strimzi`).",
            }
        }


DEFAULT_SERVER = BusServer()
DEFAULT_TOPICS = TopicSettings()


@dataclass
class Section:
    """Channels, operations and messages one part of the document contributes."""

    channels: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, Any] = field(default_factory=dict)
    messages: dict[str, Any] = field(default_factory=dict)

    def add(self, other: Section) -> None:
        """Merge ``other`` in (channels it shares with this section gain its messages)."""
        for name, channel in other.channels.items():
            known = self.channels.setdefault(name, channel)
            if known is not channel:
                known.setdefault("messages", {}).update(channel.get("messages", {}))
        self.operations.update(other.operations)
        self.messages.update(other.messages)


@dataclass(frozen=True)
class _View:
    """What the document describes: the whole bus, or one institution (``institution``)."""

    registry: BusRegistry
    samples: Mapping[str, Any]
    topic_settings: TopicSettings
    institution: str | None

    @property
    def institutions(self) -> list[Institution]:
        every = self.registry.document.institutions
        return [i for i in every if self.institution in (None, i.id)]

    def address(self, family: str) -> str:
        """The topic of ``family`` (``ingress``, ``deliver``, …): concrete or parametrised."""
        return f"esb.{family}.{self.institution or '{institution}'}"

    def channel(self, family: str, title: str, description: str) -> dict[str, Any]:
        """A channel of an institution topic family, with its Kafka binding."""
        address = self.address(family)
        spec = next(
            spec
            for spec in topics.institution_topics(
                self.institution or "{institution}", self.topic_settings
            )
            if spec.name == address
        )
        channel: dict[str, Any] = {
            "address": address,
            "title": title,
            "description": description,
            "messages": {},
            "bindings": {"kafka": _topic_binding(spec)},
        }
        if self.institution is None:
            ids = [i.id for i in self.registry.document.institutions]
            channel["parameters"] = {
                "institution": {
                    "description": "An institution's id in the registry.",
                    "enum": ids,
                    "examples": ids[:3],
                }
            }
        return channel


def _topic_binding(spec: topics.TopicSpec) -> dict[str, Any]:
    configuration: dict[str, Any] = {}
    if "retention.ms" in spec.config:
        configuration["retention.ms"] = int(spec.config["retention.ms"])
    if "cleanup.policy" in spec.config:
        configuration["cleanup.policy"] = spec.config["cleanup.policy"].split(",")
    return {
        "partitions": spec.partitions,
        "topicConfiguration": configuration,
        "bindingVersion": parts.KAFKA_BINDING_VERSION,
    }


def publishing(view: _View) -> Section:
    """Every institution of the view may send the event types it owns on its ingress topic."""
    section = Section()
    channel = view.channel(
        "ingress",
        "Ingress",
        "Where an institution publishes its signed events (many event types); the pipeline "
        "validates them and routes them under the agreements.",
    )
    for institution in view.institutions:
        owned = view.registry.catalog.owned_by(institution.id)
        if not owned:
            continue
        for event_type in owned:
            section.messages[event_type.name] = messages.event_message(
                view.registry, event_type, view.samples
            )
            channel["messages"][event_type.name] = parts.ref(
                "components", "messages", event_type.name
            )
        section.operations[f"{institution.id}.publish"] = {
            "action": "send",
            "channel": parts.ref("channels", "ingress"),
            "title": f"{institution.name} publishes",
            "summary": f"{institution.id} sends the event types it owns on "
            f"{topics.ingress(institution.id)}.",
            "description": "Sign each event with a registered key of the institution; the "
            f"producer connects as `User:{institution.id}`, with `acks=all` and idempotence "
            "(a legacy system posts to the HTTP gateway instead, which publishes here).",
            "messages": [parts.ref("channels", "ingress", "messages", t.name) for t in owned],
            "x-govesb-institution": institution.id,
        }
    if section.operations or view.institution is None:
        section.channels["ingress"] = channel
    return section


def receiving(view: _View) -> Section:
    """Each agreement of an institution of the view: what it receives on its deliver topic."""
    section = Section()
    channel = view.channel(
        "deliver",
        "Deliveries",
        "What a subscriber receives under its agreements: only the agreed fields, masked where "
        "agreed, re-signed by the bus (`ce_sigkeyid` is the bus's key).",
    )
    wanted = {i.id for i in view.institutions}
    for subscription in view.registry.document.subscriptions:
        if subscription.subscriber not in wanted:
            continue
        names = []
        for type_name in subscription.event_types:
            event_type = view.registry.catalog.event_types[type_name]
            name = delivery_name(subscription.id, type_name)
            section.messages[name] = messages.delivery_message(
                view.registry, event_type, subscription, view.samples
            )
            channel["messages"][name] = parts.ref("components", "messages", name)
            names.append(name)
        subscriber = subscription.subscriber
        http = subscription.delivery == "http"
        section.operations[f"{subscriber}.receive.{subscription.id}"] = {
            "action": "receive",
            "channel": parts.ref("channels", "deliver"),
            "title": f"{subscriber} receives under {subscription.id}",
            "summary": subscription.purpose or f"Agreement {subscription.id}.",
            "description": (
                f"Fields delivered: {', '.join(f'`{f}`' for f in subscription.fields)}"
                + (
                    f"; masked: {', '.join(f'`{f}`' for f in subscription.mask)}"
                    if subscription.mask
                    else ""
                )
                + (
                    f"; only events where {_conditions(subscription)}"
                    if subscription.filter
                    else ""
                )
                + "."
                + (" Delivered over HTTP by the bus's sink." if http else "")
            ),
            "messages": [parts.ref("channels", "deliver", "messages", n) for n in names],
            "bindings": (
                parts.consumer_group_binding(
                    f"^{topics.sink_group(subscriber)}$", "The bus's HTTP sink for this subscriber."
                )
                if http
                else parts.consumer_group_binding(
                    rf"^{subscriber}\..+$",
                    f"A consumer group of {subscriber}: `{subscriber}.<anything>` (ACL).",
                )
            ),
            "x-govesb-institution": subscriber,
            "x-govesb-agreement": subscription.id,
        }
    if section.operations or view.institution is None:
        section.channels["deliver"] = channel
    return section


def _conditions(subscription: Subscription) -> str:
    return " and ".join(
        f"`{c.field}` {c.op}" + ("" if c.op == "exists" else f" {json.dumps(c.value)}")
        for c in subscription.filter
    )


def rejections(view: _View) -> Section:
    """A publisher of the view receives its rejected records, with the reason, on its topic."""
    section = Section()
    publishers = [i for i in view.institutions if view.registry.catalog.owned_by(i.id)]
    if not publishers and view.institution is not None:
        return section
    channel = view.channel(
        "rejected",
        "Rejections",
        "The records the pipeline refused, as they were published, with the reason.",
    )
    channel["messages"][REJECTED_RECORD] = parts.ref("components", "messages", REJECTED_RECORD)
    section.channels["rejected"] = channel
    section.messages[REJECTED_RECORD] = messages.rejected_record()
    for institution in publishers:
        section.operations[f"{institution.id}.rejections"] = {
            "action": "receive",
            "channel": parts.ref("channels", "rejected"),
            "title": f"{institution.id} reads its rejections",
            "summary": f"Records of {institution.id} the bus refused, on "
            f"{topics.rejected(institution.id)}.",
            "messages": [parts.ref("channels", "rejected", "messages", REJECTED_RECORD)],
            "bindings": parts.consumer_group_binding(
                rf"^{institution.id}\..+$",
                f"A consumer group of {institution.id}: `{institution.id}.<anything>` (ACL).",
            ),
            "x-govesb-institution": institution.id,
        }
    return section


def operators(view: _View) -> Section:
    """The operators' topics (whole-bus view only): dead letters and the audit log."""
    section = Section()
    if view.institution is not None:
        return section
    dlq = view.channel(
        "dlq",
        "Dead letters",
        "Deliveries the HTTP sink could not make after its retries (`govesb dlq replay`).",
    )
    dlq["messages"][DEAD_LETTER] = parts.ref("components", "messages", DEAD_LETTER)
    audit_spec = next(
        s for s in topics.shared_topics(view.topic_settings) if s.name == topics.AUDIT
    )
    section.channels["dlq"] = dlq
    section.channels["audit"] = {
        "address": topics.AUDIT,
        "title": "Audit log",
        "description": "One hash-chained record per event and delivery; kept forever.",
        "messages": {parts.AUDIT_RECORD: parts.ref("components", "messages", parts.AUDIT_RECORD)},
        "bindings": {"kafka": _topic_binding(audit_spec)},
    }
    section.messages[DEAD_LETTER] = messages.dead_letter()
    section.messages[parts.AUDIT_RECORD] = messages.audit_message()
    section.operations["operators.deadLetters"] = {
        "action": "receive",
        "channel": parts.ref("channels", "dlq"),
        "summary": "Operators list and replay dead letters (`govesb dlq list|replay`).",
        "messages": [parts.ref("channels", "dlq", "messages", DEAD_LETTER)],
    }
    section.operations["auditors.verify"] = {
        "action": "receive",
        "channel": parts.ref("channels", "audit"),
        "summary": "Auditors verify every chain (`govesb audit verify`).",
        "messages": [parts.ref("channels", "audit", "messages", parts.AUDIT_RECORD)],
    }
    return section


def _service_channel(view: _View, family: str, title: str, description: str) -> dict[str, Any]:
    """``esb.request.{institution}`` or ``esb.reply.{institution}``: the service topics."""
    name = view.institution or "{institution}"
    spec = topics.service_topics([name], [name], view.topic_settings)[
        0 if family == "request" else 1
    ]
    channel: dict[str, Any] = {
        "address": spec.name,
        "title": title,
        "description": description,
        "messages": {},
        "bindings": {"kafka": _topic_binding(spec)},
    }
    if view.institution is None:
        ids = [i.id for i in view.registry.document.institutions]
        channel["parameters"] = {
            "institution": {"description": "An institution's id in the registry.", "enum": ids}
        }
    return channel


def services(view: _View) -> Section:
    """Requests and answers (``esb.request.<provider>`` / ``esb.reply.<requester>``): the
    services an institution serves (a ``receive`` of its requests, with the answer it sends
    back on its ingress topic as the reply) and those it may call (a ``send`` on its ingress
    topic, with the answer, minimised to its grant, as the reply on ``esb.reply``)."""
    section = Section()
    registry = view.registry
    wanted = {i.id for i in view.institutions}
    served = [
        (s, registry.catalog.services[s.api_code])
        for s in registry.document.services
        if registry.catalog.services[s.api_code].provider in wanted
    ]
    calls = [g for g in registry.document.grants if g.consumer in wanted]
    if not served and not calls:
        return section
    ingress = view.channel(
        "ingress", "Ingress",
        "Where an institution publishes its signed events, its requests and its answers.",
    )  # fmt: skip
    section.channels["ingress"] = ingress
    if served:
        requests = _service_channel(
            view, "request", "Requests",
            "The requests routed to a provider's services, re-signed by the bus, each with its "
            "reply ticket (`esb_ticket`, `esb_ticket_sig`, `esb_ticket_key`) to copy onto the "
            "answer.",
        )  # fmt: skip
        section.channels["request"] = requests
    for service, declared in served:
        request_name, answer_name = f"{service.api_code}.request", f"{service.api_code}.answer"
        section.messages[request_name] = messages.request_message(registry, declared, view.samples)
        section.messages[answer_name] = messages.answer_message(registry, declared, view.samples)
        requests["messages"][request_name] = parts.ref("components", "messages", request_name)
        ingress["messages"][answer_name] = parts.ref("components", "messages", answer_name)
        provider = declared.provider
        via = (
            "The bus's provider connector calls the provider's HTTP endpoint in GovESB format "
            "and answers for it."
            if service.served_by == "http"
            else f"{provider} reads its requests (consumer group `{provider}.<anything>`) and "
            "answers on its ingress topic."
        )
        section.operations[f"{provider}.serve.{service.api_code}"] = {
            "action": "receive",
            "channel": parts.ref("channels", "request"),
            "title": f"{provider} serves {service.api_code}",
            "summary": declared.description or f"Service {service.api_code}.",
            "description": f"{via} Deadline: {service.deadline_s:g} s; late answers taken for "
            f"{service.late_answers_s:g} s after it.",
            "messages": [parts.ref("channels", "request", "messages", request_name)],
            "reply": {
                "channel": parts.ref("channels", "ingress"),
                "messages": [parts.ref("channels", "ingress", "messages", answer_name)],
            },
            "x-govesb-institution": provider,
            "x-govesb-api": service.api_code,
        }
    if calls:
        replies = _service_channel(
            view, "reply", "Answers",
            "The answers to an institution's requests (minimised to its grant, as JSON, "
            "re-signed by the bus), and the bus's refusals of them (`esb_status: refused`).",
        )  # fmt: skip
        section.channels["reply"] = replies
    for grant in calls:
        declared = registry.catalog.services[grant.api_code]
        request_name = f"{grant.api_code}.request"
        reply_name = f"{grant.api_code}.reply.{grant.id}"
        section.messages.setdefault(
            request_name, messages.request_message(registry, declared, view.samples)
        )
        section.messages[reply_name] = messages.reply_message(registry, declared, grant)
        ingress["messages"][request_name] = parts.ref("components", "messages", request_name)
        replies["messages"][reply_name] = parts.ref("components", "messages", reply_name)
        section.operations[f"{grant.consumer}.call.{grant.api_code}"] = {
            "action": "send",
            "channel": parts.ref("channels", "ingress"),
            "title": f"{grant.consumer} calls {grant.api_code}",
            "summary": grant.purpose or f"Grant {grant.id}.",
            "description": f"Answer fields: {', '.join(f'`{f}`' for f in grant.fields)}"
            + (f"; masked: {', '.join(f'`{f}`' for f in grant.mask)}" if grant.mask else "")
            + f". At most {grant.rate_per_s:g} requests/s (grant `{grant.id}`). Over HTTP, "
            "any GovESB client calls `POST /engine/esb/request` with this `apiCode`.",
            "messages": [parts.ref("channels", "ingress", "messages", request_name)],
            "reply": {
                "channel": parts.ref("channels", "reply"),
                "messages": [parts.ref("channels", "reply", "messages", reply_name)],
            },
            "x-govesb-institution": grant.consumer,
            "x-govesb-api": grant.api_code,
            "x-govesb-grant": grant.id,
        }
    return section


SECTIONS = (publishing, receiving, rejections, operators, services)


def asyncapi_document(
    registry: BusRegistry,
    samples: Mapping[str, Any],
    *,
    server: BusServer = DEFAULT_SERVER,
    topic_settings: TopicSettings = DEFAULT_TOPICS,
    institution: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the whole bus, or of ``institution`` alone.

    Args:
        registry: the linted registry and its catalogue.
        samples: example payloads by event type (``schemas/samples.yaml``).
        server: where the Kafka cluster and the schema registry are.
        topic_settings: partitions and retention of the topics ``registry apply`` creates.
        institution: an institution id for its own view; None for the whole bus.

    Raises:
        AsyncApiError: ``institution`` is not in the registry, or an agreement pins a schema
            version the catalogue does not have.
    """
    if institution is not None and institution not in registry.institutions:
        raise AsyncApiError(f"no institution {institution!r} in the registry")
    view = _View(registry, samples, topic_settings, institution)
    body = Section()
    for section in SECTIONS:
        body.add(section(view))
    who = registry.institutions[institution] if institution else None
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"GovESB: {who.name} ({who.id})" if who else "GovESB",
            "version": __version__,
            "description": _description(who),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {SERVER: server.describe()},
        "channels": body.channels,
        "operations": body.operations,
        "components": {
            "schemas": _schemas(view),
            "messages": dict(sorted(body.messages.items())),
        },
    }
    schemes = server.security_schemes()
    if schemes:
        document["components"]["securitySchemes"] = schemes
    # The version names the content: a change to the catalogue or the registry changes it.
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    document["info"]["version"] = f"{__version__}+{digest[:12]}"
    return document


def _schemas(view: _View) -> dict[str, Any]:
    schemas = {
        parts.CE_HEADERS: parts.cloudevents_headers(),
        parts.REJECTION_HEADERS: parts.rejection_headers(),
    }
    if view.institution is None:
        schemas[parts.DEAD_LETTER_HEADERS] = parts.dead_letter_headers()
        schemas[parts.AUDIT_RECORD] = parts.audit_record()
    return schemas


def _description(who: Institution | None) -> str:
    scope = (
        f"What **{who.name}** may do on the bus: the events it publishes, what it receives "
        "under its data-sharing agreements, and its rejections."
        if who
        else "Every institution's events, agreements and rejections, and the operators' topics."
    )
    return (
        f"{scope}\n\nEvery event is a CloudEvents 1.0 event in Kafka binary mode: `ce_*` "
        "headers, the business key as Kafka key, the payload in Confluent wire format (0x00, "
        "4-byte schema id, Avro; subjects by RecordNameStrategy), signed with ECDSA/SHA-256 by "
        "the publisher and re-signed by the bus on delivery. Generated by `govesb catalog "
        "asyncapi` from the catalogue and the registry."
    )
