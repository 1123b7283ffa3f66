"""What the portal shows of the registry: the catalogue and the agreements, as page rows.

Pure functions over the catalogue (the schemas on disk, with their field docs and PII marks)
and the live registry view's agreements; nothing here reads Kafka or HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from streams.contract.catalog import Catalog, EventType
from streams.registry.model import Grant, Subscription
from streams.registry.view import ServiceRecord


@dataclass(frozen=True)
class FieldRow:
    """One field of an event type."""

    name: str
    type: str
    doc: str
    pii: bool
    key: bool


@dataclass(frozen=True)
class EventTypeRow:
    """One event type of the catalogue, as its page shows it."""

    name: str
    owner: str
    description: str
    key: str
    compatibility: str
    versions: int
    fields: tuple[FieldRow, ...]
    sample: str  # JSON text, '' when the samples have none


@dataclass(frozen=True)
class AgreementRow:
    """A data-sharing agreement: who receives which fields of which types, how and why."""

    id: str
    subscriber: str
    owners: tuple[str, ...]
    event_types: tuple[str, ...]
    fields: tuple[tuple[str, bool], ...]  # (field, masked)
    delivery: str
    purpose: str
    filtered: bool
    schema_version: str


@dataclass(frozen=True)
class ServiceRow:
    """A request/reply service an institution serves or may call, and under which grant."""

    api_code: str
    provider: str
    consumers: tuple[str, ...]  # who may call it (for the provider), or the caller itself
    description: str
    served_by: str  # http or kafka
    deadline_s: float
    fields: tuple[tuple[str, bool], ...] = ()  # answer fields the caller sees (field, masked)
    purpose: str = ""


def type_text(avro_type: Any) -> str:
    """A short readable form of an Avro type (``string``, ``date``, ``null | string``)."""
    if isinstance(avro_type, list):
        return " | ".join(type_text(t) for t in avro_type)
    if isinstance(avro_type, dict):
        if "logicalType" in avro_type:
            return str(avro_type["logicalType"])
        if avro_type.get("type") == "array":
            return f"array of {type_text(avro_type.get('items'))}"
        if avro_type.get("type") == "enum":
            return "enum " + ", ".join(avro_type.get("symbols", []))
        if avro_type.get("type") == "record":
            return f"record {avro_type.get('name', '')}"
        return type_text(avro_type.get("type"))
    return str(avro_type)


def load_samples(path: Path) -> dict[str, Any]:
    """Sample payloads by event type (an unreadable or missing file: none)."""
    try:
        found = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return found if isinstance(found, dict) else {}


def event_type_row(event_type: EventType, samples: Mapping[str, Any]) -> EventTypeRow:
    """The catalogue entry of one event type."""
    pii = set(event_type.pii)
    fields = tuple(
        FieldRow(
            name=str(f["name"]),
            type=type_text(f["type"]),
            doc=str(f.get("doc", "")),
            pii=f["name"] in pii,
            key=f["name"] == event_type.key,
        )
        for f in event_type.schema.get("fields", [])
    )
    sample = samples.get(event_type.name)
    return EventTypeRow(
        name=event_type.name,
        owner=event_type.owner,
        description=event_type.description,
        key=event_type.key,
        compatibility=event_type.compatibility,
        versions=len(event_type.versions),
        fields=fields,
        sample=json.dumps(sample, indent=2, ensure_ascii=False, default=str) if sample else "",
    )


def catalogue(catalog: Catalog, samples: Mapping[str, Any]) -> list[EventTypeRow]:
    """Every event type, by name."""
    return sorted((event_type_row(t, samples) for t in catalog), key=lambda r: r.name)


def agreement_row(subscription: Subscription, catalog: Catalog) -> AgreementRow:
    """One agreement as a page row."""
    owners = sorted(
        {t.owner for name in subscription.event_types if (t := catalog.get(name)) is not None}
    )
    masked = set(subscription.mask)
    return AgreementRow(
        id=subscription.id,
        subscriber=subscription.subscriber,
        owners=tuple(owners),
        event_types=tuple(subscription.event_types),
        fields=tuple((f, f in masked) for f in subscription.fields),
        delivery=subscription.delivery,
        purpose=subscription.purpose,
        filtered=bool(subscription.filter),
        schema_version=str(subscription.schema_version),
    )


def as_subscriber(
    subscriptions: Iterable[Subscription], catalog: Catalog, institution: str
) -> list[AgreementRow]:
    """The agreements under which ``institution`` receives data."""
    return sorted(
        (agreement_row(s, catalog) for s in subscriptions if s.subscriber == institution),
        key=lambda r: r.id,
    )


def as_owner(
    subscriptions: Iterable[Subscription], catalog: Catalog, institution: str
) -> list[AgreementRow]:
    """The agreements under which others receive ``institution``'s data: who, which fields,
    masked or not, and why."""
    return sorted(
        (r for s in subscriptions if institution in (r := agreement_row(s, catalog)).owners),
        key=lambda r: r.id,
    )


def services_served(
    services: Iterable[ServiceRecord], grants: Iterable[Grant], institution: str
) -> list[ServiceRow]:
    """The request/reply services ``institution`` provides, and who may call each."""
    granted = list(grants)
    return sorted(
        (
            ServiceRow(
                api_code=s.api_code,
                provider=s.provider,
                consumers=tuple(sorted(g.consumer for g in granted if g.api_code == s.api_code)),
                description=s.description,
                served_by=s.served_by,
                deadline_s=s.deadline_s,
            )
            for s in services
            if s.provider == institution
        ),
        key=lambda r: r.api_code,
    )


def services_called(
    services: Iterable[ServiceRecord], grants: Iterable[Grant], institution: str
) -> list[ServiceRow]:
    """The services ``institution`` may call (its grants): which answer fields it sees, why."""
    by_code = {s.api_code: s for s in services}
    rows = []
    for grant in grants:
        service = by_code.get(grant.api_code)
        if grant.consumer != institution or service is None:
            continue
        masked = set(grant.mask)
        rows.append(
            ServiceRow(
                api_code=grant.api_code,
                provider=service.provider,
                consumers=(institution,),
                description=service.description,
                served_by=service.served_by,
                deadline_s=service.deadline_s,
                fields=tuple((f, f in masked) for f in grant.fields),
                purpose=grant.purpose,
            )
        )
    return sorted(rows, key=lambda r: r.api_code)
