"""The messages of the bus's AsyncAPI documents: events as published, deliveries as each
agreement makes them, rejected records, dead letters and audit records. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.contract.catalog import EventType, Service
from streams.contract.envelope import CONTENT_TYPE, JSON_CONTENT_TYPE, source_for
from streams.pipeline.routing import delivery_schema, minimise
from streams.registry import asyncapi_parts as parts
from streams.registry.model import BusRegistry, Grant, Institution, Subscription

REJECTED_RECORD = "RejectedRecord"
DEAD_LETTER = "DeadLetter"


class AsyncApiError(ValueError):
    """The registry cannot be described (e.g. an agreement pins a version the catalogue lacks)."""


def _key_id(institution: Institution) -> str:
    valid = [key.id for key in institution.keys if not key.revoked]
    return valid[0] if valid else f"{institution.id}-<key id>"


def _sample(samples: Mapping[str, Any], event_type: EventType) -> dict[str, Any]:
    sample = samples.get(event_type.name)
    return parts.json_safe(sample) if isinstance(sample, Mapping) else {}


def event_message(
    registry: BusRegistry, event_type: EventType, samples: Mapping[str, Any]
) -> dict[str, Any]:
    """What the owner publishes: the event type's Avro schema, headers, key and example."""
    owner = registry.institutions[event_type.owner]
    systems = "|".join(owner.systems)
    message: dict[str, Any] = {
        "name": event_type.name,
        "title": event_type.schema.get("name", event_type.name),
        "summary": event_type.description or str(event_type.schema.get("doc", "")),
        "description": (
            f"Published by **{owner.name}** (`{owner.id}`) only. Key: `{event_type.key}`. "
            f"Schema registry subject: `{event_type.subject}` (compatibility "
            f"{event_type.compatibility}).\n\n"
            + parts.field_table(event_type.schema, event_type.pii)
        ),
        "contentType": CONTENT_TYPE,
        "headers": parts.event_headers(
            event_type.name,
            CONTENT_TYPE,
            source_pattern=f"^/institutions/{owner.id}/systems/({systems})$",
        ),
        "payload": parts.avro_payload(event_type.schema),
        "correlationId": {
            "description": "Related events share a correlation id.",
            "location": "$message.header#/ce_correlationid",
        },
        "bindings": parts.kafka_message_binding(
            f"The business key: the payload's `{event_type.key}` (also `ce_subject`)."
        ),
        "x-govesb-owner": owner.id,
        "x-govesb-key": event_type.key,
        "x-govesb-pii": list(event_type.pii),
        "x-govesb-compatibility": event_type.compatibility,
    }
    sample = _sample(samples, event_type)
    if sample:
        message["examples"] = [
            {
                "name": "sample",
                "summary": "From schemas/samples.yaml (values as JSON; Avro on the wire).",
                "headers": parts.example_headers(
                    event_type,
                    source_for(owner.id, owner.systems[0]),
                    sample.get(event_type.key, ""),
                    _key_id(owner),
                    CONTENT_TYPE,
                ),
                "payload": sample,
            }
        ]
    return message


def _source_version(event_type: EventType, subscription: Subscription) -> dict[str, Any]:
    version = subscription.schema_version
    if version == "latest":
        return event_type.schema
    versions = event_type.versions  # numbered alike in every registry: oldest is 1
    if not 1 <= version <= len(versions):
        raise AsyncApiError(
            f"agreement {subscription.id} pins version {version} of {event_type.name}, "
            f"which has {len(versions)} version(s) in the catalogue"
        )
    return versions[version - 1]


def delivery_message(
    registry: BusRegistry,
    event_type: EventType,
    subscription: Subscription,
    samples: Mapping[str, Any],
) -> dict[str, Any]:
    """What ``subscription``'s subscriber receives of ``event_type``: only the agreed fields."""
    schema = parts.simple_names(
        delivery_schema(_source_version(event_type, subscription), event_type.name, subscription)
    )
    http = subscription.delivery == "http"
    content_type = JSON_CONTENT_TYPE if http else CONTENT_TYPE
    delivered_pii = [name for name in subscription.fields if name in event_type.pii]
    how = (
        "over HTTP to the subscriber's endpoint by the bus's HTTP sink; the value on the topic "
        "is the JSON body the endpoint receives, signed by the bus over those bytes"
        if http
        else "on Kafka, Avro under the agreement's own delivery schema, re-signed by the bus"
    )
    message: dict[str, Any] = {
        "name": schema["namespace"] + "." + schema["name"],
        "title": f"{schema['name']} for {subscription.subscriber} ({subscription.id})",
        "summary": subscription.purpose or f"{event_type.name} under agreement {subscription.id}",
        "description": (
            f"`{event_type.name}` as delivered under agreement `{subscription.id}`, {how}. "
            f"Schema version: {subscription.schema_version}.\n\n"
            + parts.field_table(schema, event_type.pii, subscription.mask)
        ),
        "contentType": content_type,
        "headers": parts.event_headers(event_type.name, content_type, subscription=subscription.id),
        "payload": parts.avro_payload(schema),
        "bindings": parts.kafka_message_binding(
            f"The business key: `{event_type.key}` of the published event (also `ce_subject`).",
            avro=not http,
        ),
        "x-govesb-agreement": {
            "id": subscription.id,
            "subscriber": subscription.subscriber,
            "purpose": subscription.purpose,
            "eventType": event_type.name,
            "fields": list(subscription.fields),
            "masked": list(subscription.mask),
            "filter": [c.model_dump(mode="json") for c in subscription.filter],
            "schemaVersion": subscription.schema_version,
            "delivery": subscription.delivery,
        },
        "x-govesb-pii": delivered_pii,
    }
    sample = _sample(samples, event_type)
    if sample:
        owner = registry.institutions[event_type.owner]
        headers = parts.example_headers(
            event_type,
            source_for(owner.id, owner.systems[0]),
            sample.get(event_type.key, ""),
            "<the bus's key id>",
            content_type,
        )
        headers["esb_subscription"] = subscription.id
        message["examples"] = [
            {
                "name": "sample",
                "summary": "The catalogue's sample as this agreement delivers it.",
                "headers": headers,
                "payload": minimise(sample, subscription),
            }
        ]
    return message


def rejected_record() -> dict[str, Any]:
    """A record the pipeline refused, as it was published, with the reason headers."""
    return {
        "name": REJECTED_RECORD,
        "title": "Rejected record",
        "summary": "A record the bus refused: the original key, value and headers, and why.",
        "headers": parts.ref("components", "schemas", parts.REJECTION_HEADERS),
        "payload": {
            "type": "string",
            "format": "binary",
            "description": "The value exactly as published (usually an Avro event).",
        },
        "examples": [
            {
                "name": "bad-signature",
                "headers": {
                    "esb_reason": "bad-signature",
                    "esb_detail": "signature does not verify with key nida-2e3f1f063154",
                    "esb_source": "esb.ingress.nida[2]@1041",
                },
            }
        ],
    }


def dead_letter() -> dict[str, Any]:
    """A delivery the HTTP sink could not make, with the error headers."""
    return {
        "name": DEAD_LETTER,
        "title": "Dead letter",
        "summary": "A delivery that failed: the record as it was on the deliver topic, and why.",
        "headers": parts.ref("components", "schemas", parts.DEAD_LETTER_HEADERS),
        "payload": {"type": "string", "format": "binary", "description": "The delivery's value."},
    }


def audit_message() -> dict[str, Any]:
    """One record of ``esb.audit`` (JSON)."""
    return {
        "name": parts.AUDIT_RECORD,
        "title": "Audit record",
        "contentType": JSON_CONTENT_TYPE,
        "payload": parts.ref("components", "schemas", parts.AUDIT_RECORD),
        "bindings": parts.kafka_message_binding("The writer's chain id.", avro=False),
    }


def _call_headers(type_name: str, content_type: str, extra: dict[str, Any]) -> dict[str, Any]:
    headers = parts.event_headers(type_name, content_type)
    headers["allOf"][1]["properties"].update(extra)
    return headers


_TICKET = {
    "esb_ticket": {"type": "string", "description": "The reply ticket (JSON: requester, "
                   "provider, api_code, request_id, deadline_ms, until_ms), signed by the bus."},
    "esb_ticket_sig": {"type": "string", "description": "The bus's signature of esb_ticket."},
    "esb_ticket_key": {"type": "string", "description": "The bus key that signed it."},
}  # fmt: skip


def request_message(
    registry: BusRegistry, service: Service, samples: Mapping[str, Any]
) -> dict[str, Any]:
    """A request for ``service``: its Avro request record; on the provider's request topic
    it also carries the reply ticket."""
    record = service.request
    message: dict[str, Any] = {
        "name": f"{service.api_code}.request",
        "title": f"{service.api_code} request",
        "summary": record.description or f"A request for {service.api_code}.",
        "description": (
            f"`ce_id` is the request id, `ce_subject` and the Kafka key repeat it; `esb_api` is "
            f"`{service.api_code}`. Served by `{service.provider}`.\n\n"
            + parts.field_table(record.schema, ())
        ),
        "contentType": CONTENT_TYPE,
        "headers": _call_headers(
            record.name,
            CONTENT_TYPE,
            {"esb_api": {"const": service.api_code}, **_TICKET},
        ),
        "payload": parts.avro_payload(record.schema),
        "correlationId": {"description": "The request id.", "location": "$message.header#/ce_id"},
        "bindings": parts.kafka_message_binding("The request id (also `ce_id`, `ce_subject`)."),
        "x-govesb-api": service.api_code,
    }
    sample = samples.get(f"{service.api_code}.request")
    if isinstance(sample, Mapping):
        caller = next((g.consumer for g in registry.document.grants
                       if g.api_code == service.api_code), service.provider)  # fmt: skip
        message["examples"] = [_call_example(registry, record, caller, sample)]
    return message


def _call_example(
    registry: BusRegistry, record: EventType, institution: str, sample: Mapping[str, Any]
) -> dict[str, Any]:
    who = registry.institutions[institution]
    return {
        "name": "sample",
        "summary": "From schemas/samples.yaml (values as JSON; Avro on the wire).",
        "headers": parts.example_headers(
            record,
            source_for(who.id, who.systems[0]),
            parts.EXAMPLE_EVENT_ID,
            _key_id(who),
            CONTENT_TYPE,
        ),
        "payload": parts.json_safe(sample),
    }


def answer_message(
    registry: BusRegistry, service: Service, samples: Mapping[str, Any]
) -> dict[str, Any]:
    """The provider's answer to a request for ``service``, on its own ingress topic."""
    record = service.response
    message: dict[str, Any] = {
        "name": f"{service.api_code}.answer",
        "title": f"{service.api_code} answer",
        "summary": record.description or f"The answer to a {service.api_code} request.",
        "description": (
            "`ce_correlationid` and the Kafka key are the request id; the request's three "
            "`esb_ticket*` headers are copied unchanged; `esb_status` is `answered` (this "
            "record) or `provider-error` (no value; `esb_reason`, `esb_message`).\n\n"
            + parts.field_table(record.schema, service.pii)
        ),
        "contentType": CONTENT_TYPE,
        "headers": _call_headers(
            record.name,
            CONTENT_TYPE,
            {"esb_status": {"enum": ["answered", "provider-error"]}, **_TICKET},
        ),
        "payload": parts.avro_payload(record.schema),
        "correlationId": {
            "description": "The request id.",
            "location": "$message.header#/ce_correlationid",
        },
        "bindings": parts.kafka_message_binding("The request id."),
        "x-govesb-api": service.api_code,
        "x-govesb-pii": list(service.pii),
    }
    sample = samples.get(f"{service.api_code}.response")
    if isinstance(sample, Mapping):
        message["examples"] = [_call_example(registry, record, service.provider, sample)]
    return message


def reply_message(registry: BusRegistry, service: Service, grant: Grant) -> dict[str, Any]:
    """What ``grant``'s consumer receives: the answer as JSON, only the granted fields."""
    del registry
    fields = {f["name"]: f for f in service.response.schema.get("fields", [])}
    return {
        "name": f"{service.api_code}.reply.{grant.id}",
        "title": f"{service.api_code} answer for {grant.consumer}",
        "summary": f"The answer to {grant.consumer}'s request, under grant {grant.id}.",
        "description": (
            "Compact JSON of the answer, re-signed by the bus; `esb_status` `answered`, "
            "`provider-error` (with `esb_reason`, `esb_message`) or `refused` (the bus refused "
            "the request: `esb_reason`, `esb_detail`); `esb_late: 1` when it came after the "
            "deadline.\n\n"
            + parts.field_table(
                {"fields": [fields[f] for f in grant.fields if f in fields]},
                service.pii,
                grant.mask,
            )
        ),
        "contentType": JSON_CONTENT_TYPE,
        "headers": _call_headers(
            service.response.name,
            JSON_CONTENT_TYPE,
            {
                "esb_status": {"enum": ["answered", "provider-error", "refused"]},
                "esb_subscription": {"const": grant.id},
            },
        ),
        "payload": {
            "type": "object",
            "properties": {
                f: {
                    "description": str(fields[f].get("doc", ""))
                    + (" (masked: only the last 4 characters)" if f in grant.mask else "")
                }
                for f in grant.fields
                if f in fields
            },
            "additionalProperties": False,
        },
        "correlationId": {
            "description": "The request id.",
            "location": "$message.header#/ce_correlationid",
        },
        "bindings": parts.kafka_message_binding("The request id.", avro=False),
        "x-govesb-grant": grant.id,
    }
