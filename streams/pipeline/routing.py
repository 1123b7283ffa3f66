"""Stages 2 and 3 of the pipeline: route a valid event, transform it per agreement. Pure.

Routing picks the subscriptions whose event types and filters match. Transformation resolves
the payload to the subscriber's pinned schema version (Avro schema resolution), keeps only
the fields the agreement allows (data minimisation) and masks the ones it marks. What a
subscriber receives is described by a *delivery schema* derived from the pinned version:
its own record (``tz.go.esb.<subscription>.<Event>``), only the allowed fields, masked
fields as optional strings.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable
from typing import Any

import fastavro

from streams.contract.jsonavro import to_json
from streams.registry.model import Condition, Subscription

MASK = "*"
DELIVERY_NAMESPACE = "tz.go.esb"


def _comparable(value: Any) -> Any:
    """Payload values as the registry YAML writes them (dates as ISO strings, ...)."""
    return to_json(value)


def condition_holds(condition: Condition, payload: dict[str, Any]) -> bool:
    """Whether one filter condition holds for ``payload``; a missing field never matches."""
    if condition.op == "exists":
        return payload.get(condition.field) is not None
    if condition.field not in payload or payload[condition.field] is None:
        return condition.op in ("ne", "not_in")
    value = _comparable(payload[condition.field])
    expected = condition.value
    try:
        match condition.op:
            case "eq":
                return bool(value == expected)
            case "ne":
                return bool(value != expected)
            case "in":
                return value in (expected or [])
            case "not_in":
                return value not in (expected or [])
            case "gt":
                return bool(value > expected)
            case "ge":
                return bool(value >= expected)
            case "lt":
                return bool(value < expected)
            case "le":
                return bool(value <= expected)
    except TypeError:  # e.g. comparing a string field with a number: the filter does not hold
        return False
    return False


def route(
    event_type: str, payload: dict[str, Any], subscriptions: Iterable[Subscription]
) -> list[Subscription]:
    """The subscriptions that receive this event, sorted by id (a stable fan-out order)."""
    return sorted(
        (
            s
            for s in subscriptions
            if event_type in s.event_types and all(condition_holds(c, payload) for c in s.filter)
        ),
        key=lambda s: s.id,
    )


def mask_value(value: Any) -> str | None:
    """A masked rendering: only the last 4 characters of long values survive."""
    if value is None:
        return None
    text = str(_comparable(value))
    if len(text) <= 8:
        return MASK * len(text)
    return MASK * (len(text) - 4) + text[-4:]


def _without_redefinitions(schema: Any, defined: set[str]) -> Any:
    """Replace second definitions of a named type by a reference to the first."""
    if isinstance(schema, list):
        return [_without_redefinitions(branch, defined) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed", "error"):
        name = schema["name"]
        if name in defined:
            return name
        defined.add(name)
        if kind in ("record", "error"):
            schema = {
                **schema,
                "fields": [
                    {**f, "type": _without_redefinitions(f["type"], defined)}
                    for f in schema["fields"]
                ],
            }
        return schema
    if kind == "array":
        return {**schema, "items": _without_redefinitions(schema["items"], defined)}
    if kind == "map":
        return {**schema, "values": _without_redefinitions(schema["values"], defined)}
    if isinstance(kind, dict | list):
        return {**schema, "type": _without_redefinitions(kind, defined)}
    return schema


def delivery_name(subscription_id: str, event_type: str) -> str:
    """Full name (and registry subject) of the delivery schema."""
    return (
        f"{DELIVERY_NAMESPACE}.{subscription_id.replace('-', '_')}.{event_type.rsplit('.', 1)[-1]}"
    )


def delivery_schema(
    source: dict[str, Any], event_type: str, subscription: Subscription
) -> dict[str, Any]:
    """The schema of what ``subscription`` receives of events written with ``source``."""
    expanded = fastavro.parse_schema(copy.deepcopy(source), expand=True)
    if not isinstance(expanded, dict):
        raise TypeError(f"{event_type}: the schema is not a record")
    allowed = set(subscription.fields)
    masked = set(subscription.mask)
    fields = []
    defined: set[str] = set()
    for field in expanded["fields"]:
        name = field["name"]
        if name not in allowed:
            continue
        kept = {k: v for k, v in field.items() if not k.startswith("__")}
        if name in masked:
            kept["type"] = ["null", "string"]
            kept["default"] = None
            kept["doc"] = f"{field.get('doc', name)} (masked: only the last 4 characters kept)"
        else:
            kept["type"] = _without_redefinitions(field["type"], defined)
        fields.append(kept)
    namespace, _, name = delivery_name(subscription.id, event_type).rpartition(".")
    return {
        "type": "record",
        "name": name,
        "namespace": namespace,
        "doc": (
            f"{event_type} as delivered to {subscription.subscriber} under agreement "
            f"{subscription.id}: only the fields it allows."
        ),
        "fields": fields,
    }


def resolve(value: bytes, writer: Any, reader: Any, header_size: int = 5) -> dict[str, Any]:
    """Read a wire-format value written with ``writer`` as the (pinned) ``reader`` schema."""
    body = io.BytesIO(value)
    body.seek(header_size)
    record = fastavro.schemaless_reader(body, writer, reader)
    if not isinstance(record, dict):
        raise TypeError("payload is not a record")
    return record


def minimise(payload: dict[str, Any], subscription: Subscription) -> dict[str, Any]:
    """Only the agreed fields, masked where the agreement says; source field order kept."""
    masked = set(subscription.mask)
    return {
        name: mask_value(value) if name in masked else value
        for name, value in payload.items()
        if name in subscription.fields
    }
