"""The reusable parts of the bus's AsyncAPI 3.0 documents: header schemas, the audit record,
Kafka bindings, examples and field tables. Pure; :mod:`streams.registry.asyncapi` assembles
them into a document.

Header names and formats follow :mod:`streams.contract.envelope` (CloudEvents 1.0, Kafka
binary mode), the rejection headers :mod:`streams.pipeline.process`, the dead-letter headers
the HTTP sink writes, and the audit record :mod:`streams.audit.chain`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from streams.contract.catalog import EventType
from streams.contract.envelope import CONTENT_TYPE, SPEC_VERSION
from streams.contract.reasons import REASON_DOCS, Reason

AVRO_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
KAFKA_BINDING_VERSION = "0.5.0"
CE_HEADERS = "CloudEventsHeaders"
REJECTION_HEADERS = "RejectionHeaders"
DEAD_LETTER_HEADERS = "DeadLetterHeaders"
AUDIT_RECORD = "AuditRecord"
#: Example header values that cannot be computed without a private key.
SIGNATURE_PLACEHOLDER = "<ECDSA signature, base64 DER>"
EXAMPLE_EVENT_ID = "0b6f7c1e-4a8e-4c1e-9d8e-2f0c6f3f9a10"
EXAMPLE_TIME = "2026-11-27T08:15:00.000Z"


def ref(*path: str) -> dict[str, str]:
    """A Reference Object to ``#/<path>``; ``~`` and ``/`` in a part are escaped."""
    parts = (part.replace("~", "~0").replace("/", "~1") for part in path)
    return {"$ref": "#/" + "/".join(parts)}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def cloudevents_headers() -> dict[str, Any]:
    """The CloudEvents Kafka binary-mode headers every event on the bus carries."""
    return {
        "type": "object",
        "description": "CloudEvents 1.0 attributes as Kafka headers (binary mode), UTF-8.",
        "required": [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "content-type",
            "ce_sigkeyid",
            "ce_signature",
        ],
        "properties": {
            "ce_specversion": _string("CloudEvents version.", const=SPEC_VERSION),
            "ce_id": _string(
                "The event's identity (a UUID), stable through every retry and hop; the bus "
                "refuses a second event with the same source and id (`duplicate`).",
                format="uuid",
            ),
            "ce_source": _string(
                "The publishing system: `/institutions/<institution>/systems/<system>`.",
                pattern=r"^/institutions/[a-z][a-z0-9-]*/systems/[^/\s]+$",
            ),
            "ce_type": _string("The event type: the Avro full name of the payload's record."),
            "ce_time": _string(
                "When the event happened, RFC 3339 with offset (UTC).", format="date-time"
            ),
            "ce_subject": _string(
                "The business key (the catalogue's key field of the payload); also the Kafka key."
            ),
            "content-type": _string(
                "Media type of the value.", enum=[CONTENT_TYPE, "application/json"]
            ),
            "ce_correlationid": _string("Optional: ties related events (and requests) together."),
            "ce_sigkeyid": _string(
                "Id of the registered key that signed the event: the publisher's on ingress, the "
                "bus's on deliveries."
            ),
            "ce_signature": _string(
                'ECDSA/SHA-256, base64 DER, over the UTF-8 JSON array `["govesb-sig-v1", id, '
                "source, type, time, sha256-hex(value)]`."
            ),
        },
    }


def event_headers(
    event_type: str,
    content_type: str,
    *,
    source_pattern: str | None = None,
    subscription: str | None = None,
) -> dict[str, Any]:
    """The headers of one kind of event: the CloudEvents headers with its type (and publisher,
    and agreement on deliveries) fixed."""
    fixed: dict[str, Any] = {
        "ce_type": {"const": event_type},
        "content-type": {"const": content_type},
    }
    if source_pattern:
        fixed["ce_source"] = {"pattern": source_pattern}
    schema: dict[str, Any] = {"type": "object", "properties": fixed}
    if subscription:
        fixed["esb_subscription"] = _string(
            "The agreement this delivery is made under.", const=subscription
        )
        schema["required"] = ["esb_subscription"]
    return {"allOf": [ref("components", "schemas", CE_HEADERS), schema]}


def rejection_headers(reasons: Iterable[Reason] = Reason) -> dict[str, Any]:
    """The headers the pipeline adds to a rejected record (after the record's own)."""
    codes = list(reasons)
    table = "\n".join(f"- `{code}`: {REASON_DOCS.get(code, '')}" for code in codes)
    return {
        "type": "object",
        "description": "The record's own headers as published, then these.",
        "required": ["esb_reason", "esb_detail", "esb_source"],
        "properties": {
            "esb_reason": _string(
                f"Why the bus refused the record (a stable code):\n\n{table}",
                enum=[str(code) for code in codes],
            ),
            "esb_detail": _string("A human explanation of the refusal."),
            "esb_source": _string(
                "Where the record was read: `<topic>[<partition>]@<offset>`.",
                pattern=r"^esb\.ingress\.[a-z][a-z0-9-]*\[\d+\]@\d+$",
            ),
        },
    }


def dead_letter_headers() -> dict[str, Any]:
    """The headers the HTTP sink adds to a delivery it could not make."""
    return {
        "type": "object",
        "description": "The delivery's own headers, then these.",
        "required": ["esb_error", "esb_status", "esb_attempts", "esb_source"],
        "properties": {
            "esb_error": _string(
                "The last error (`HTTP <status>: <body excerpt>` or the exception)."
            ),
            "esb_status": _string("The last HTTP status (0: no answer).", pattern=r"^\d+$"),
            "esb_attempts": _string("How many attempts were made.", pattern=r"^\d+$"),
            "esb_source": _string(
                "Where the delivery was read: `<topic>[<partition>]@<offset>`.",
                pattern=r"^esb\.deliver\.[a-z][a-z0-9-]*\[\d+\]@\d+$",
            ),
        },
    }


def audit_record() -> dict[str, Any]:
    """The JSON record each writer chains into ``esb.audit``."""
    text = {"type": "string"}
    nullable = {"type": ["string", "null"]}
    return {
        "type": "object",
        "description": "One hash-chained audit record (`govesb audit verify` checks the chains).",
        "required": ["chain", "seq", "prev", "time", "outcome", "publisher", "hash"],
        "properties": {
            "chain": {
                **text,
                "description": "The writer's chain: `<process>/<host>/<pid>/<start ms>`.",
            },
            "seq": {"type": "integer", "minimum": 0, "description": "Position in the chain."},
            "prev": {**text, "description": "SHA-256 (hex) of the previous record of the chain."},
            "time": {**text, "format": "date-time", "description": "When the record was written."},
            "outcome": {
                **text,
                "enum": ["received", "routed", "rejected", "delivered", "dead-lettered"],
                "description": "What happened to the event.",
            },
            "event_id": {**nullable, "description": "The event's `ce_id`, when readable."},
            "publisher": {**text, "description": "The publishing institution."},
            "event_type": {**nullable, "description": "The event's `ce_type`, when readable."},
            "payload_sha256": {**nullable, "description": "SHA-256 (hex) of the value."},
            "subscribers": {
                "type": "array",
                "items": text,
                "description": "Institutions the event was routed or delivered to.",
            },
            "reason": {**nullable, "description": "Rejection code, or the sink's receipt."},
            "source": {
                "type": ["array", "null"],
                "items": {"type": ["string", "integer"]},
                "description": "`[topic, partition, offset]` the event was read from.",
            },
            "hash": {**text, "description": "SHA-256 (hex) of the record's canonical JSON."},
        },
    }


def kafka_message_binding(key_description: str, *, avro: bool = True) -> dict[str, Any]:
    """The Kafka message binding: the key, and how the schema id is carried."""
    binding: dict[str, Any] = {"key": _string(key_description)}
    if avro:
        binding.update(
            schemaIdLocation="payload",
            schemaIdPayloadEncoding="confluent",  # 0x00, 4-byte big-endian id, then Avro
            schemaLookupStrategy="RecordNameStrategy",
        )
    binding["bindingVersion"] = KAFKA_BINDING_VERSION
    return {"kafka": binding}


def consumer_group_binding(pattern: str, description: str) -> dict[str, Any]:
    """The Kafka operation binding of a receive operation: which consumer groups may read."""
    return {
        "kafka": {
            "groupId": _string(description, pattern=pattern),
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data (a sample read from YAML may hold dates)."""
    return json.loads(json.dumps(value, default=str))


def example_headers(
    event_type: EventType, source: str, subject: Any, key_id: str, content_type: str
) -> dict[str, str]:
    """Headers of an example event."""
    return {
        "ce_specversion": SPEC_VERSION,
        "ce_id": EXAMPLE_EVENT_ID,
        "ce_source": source,
        "ce_type": event_type.name,
        "ce_time": EXAMPLE_TIME,
        "ce_subject": str(subject),
        "content-type": content_type,
        "ce_sigkeyid": key_id,
        "ce_signature": SIGNATURE_PLACEHOLDER,
    }


def _type_name(schema: Any) -> str:
    if isinstance(schema, list):
        return " | ".join(_type_name(branch) for branch in schema)
    if isinstance(schema, dict):
        kind = schema.get("logicalType") or schema.get("type")
        if kind == "array":
            return f"array<{_type_name(schema.get('items'))}>"
        if kind in ("record", "enum", "fixed"):
            return str(schema.get("name"))
        return _type_name(kind)
    return str(schema)


def field_table(schema: Mapping[str, Any], pii: Iterable[str], masked: Iterable[str] = ()) -> str:
    """A Markdown table of a record's fields: name, type, personal data, documentation."""
    personal, hidden = set(pii), set(masked)
    rows = ["| field | type | personal data | description |", "|---|---|---|---|"]
    for field in schema.get("fields", []):
        name = field["name"]
        mark = ("yes, masked" if name in hidden else "yes") if name in personal else ""
        doc = str(field.get("doc", "")).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type_name(field['type'])} | {mark} | {doc} |")
    return "\n".join(rows)


def avro_payload(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A Multi Format Schema Object holding an Avro schema."""
    return {"schemaFormat": AVRO_FORMAT, "schema": dict(schema)}


def simple_names(schema: Any) -> Any:
    """The same Avro schema with every dotted ``name`` split into ``name`` and ``namespace``.

    Avro allows a full name in ``name`` (fastavro's expanded schemas, hence the pipeline's
    delivery schemas, have them), but the AsyncAPI Avro meta-schema accepts simple names only.
    The full names, hence the parsing canonical form, stay the same.
    """
    if isinstance(schema, list):
        return [simple_names(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: simple_names(value) for key, value in schema.items()}
    name = schema.get("name")
    if schema.get("type") in ("record", "enum", "fixed", "error") and isinstance(name, str):
        namespace, dot, simple = name.rpartition(".")
        if dot:
            result["name"], result["namespace"] = simple, namespace
    return result
