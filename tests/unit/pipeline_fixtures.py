"""Shared builders for pipeline unit tests: the example registry in memory, signed records."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import fastavro
import yaml

from streams.client.publisher import PreparedEvent, Publisher
from streams.contract.catalog import Catalog
from streams.contract.codec import SchemaStore, WriterSchema
from streams.contract.jsonavro import from_json
from streams.contract.signing import load_private_key
from streams.pipeline.validation import Directory, IngressRecord
from streams.registry.model import load_registry
from streams.registry.sync import RegistryView, registry_records
from streams.settings import REPO_ROOT, KafkaSettings

CATALOG = Catalog.load()
SAMPLES = yaml.safe_load((REPO_ROOT / "schemas" / "samples.yaml").read_text())
KEY_IDS = {
    "nida": "nida-2e3f1f063154",
    "rita": "rita-e1ad5e26a22d",
    "tra": "tra-3509e6ac2798",
    "brela": "brela-a24c4621961c",
}
# Event types first (their ids as before), then each service's request and response.
SCHEMA_TYPES = {t.name: t for t in CATALOG.schema_types()}
SCHEMA_IDS = {name: 100 + n for n, name in enumerate(SCHEMA_TYPES)}
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def registry_view(**options: Any) -> RegistryView:
    """The example registry, loaded into a view without Kafka; ``options`` as RegistryView's."""
    registry, problems = load_registry(REPO_ROOT / "deploy" / "registry.example.yaml")
    assert registry is not None, problems
    view = RegistryView(KafkaSettings(), **options)
    for key, value in registry_records(registry).items():
        view.apply(key, value)
    return view


def directory(view: RegistryView | None = None) -> Directory:
    view = view or registry_view()
    return Directory(view.event_types, view.key_owners, view.keyring,
                     gateway_keys=view.gateway_keys, refused_keys=view.refused_keys,
                     withheld=view.withheld)  # fmt: skip


def writer(event_type: str) -> WriterSchema:
    entry = SCHEMA_TYPES.get(event_type)
    assert entry is not None
    return WriterSchema(SCHEMA_IDS[event_type], event_type, entry.parsed, entry.schema_text)


# samples.yaml keys a service's records by api code: `VERIFY_NIN.request`, `.response`.
SAMPLE_KEYS = {
    **{name: name for name in CATALOG.event_types},
    **{getattr(s, part).name: f"{code}.{part}"
       for code, s in CATALOG.services.items() for part in ("request", "response")},
}  # fmt: skip


def sample(event_type: str, **changes: Any) -> dict[str, Any]:
    entry = SCHEMA_TYPES.get(event_type)
    assert entry is not None
    return {**from_json(entry.schema, SAMPLES[SAMPLE_KEYS[event_type]]), **changes}


def prepared(
    institution: str, event_type: str, payload: dict[str, Any] | None = None, **kwargs: Any
) -> PreparedEvent:
    key = load_private_key((REPO_ROOT / f"deploy/demo-keys/{institution}.key.pem").read_text())
    publisher = Publisher(
        institution=institution,
        system="test",
        key_id=KEY_IDS[institution],
        key=key,
        catalog=CATALOG,
        schemas=None,  # type: ignore[arg-type]
        producer=None,  # type: ignore[arg-type]
    )
    entry = CATALOG.get(event_type)
    assert entry is not None
    return publisher.prepare(entry, SCHEMA_IDS[event_type], payload or sample(event_type), **kwargs)


def as_record(
    event: PreparedEvent,
    *,
    topic: str | None = None,
    offset: int = 0,
    value: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> IngressRecord:
    return IngressRecord(
        topic=topic or event.topic,
        partition=0,
        offset=offset,
        key=event.key,
        value=event.value if value is None else value,
        headers=tuple(event.headers if headers is None else headers),
    )


class OfflineSchemas(SchemaStore):
    """Schemas from the catalogue, versions numbered as a registry that took every catalogue
    version in order; delivery schemas get ids handed out in order."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        for name in SCHEMA_IDS:
            schema = writer(name)
            self._by_id[schema.id] = schema
        self.registered: dict[str, dict[str, Any]] = {}

    async def version_text(self, subject: str, version: int) -> str:
        entry = CATALOG.get(subject)
        if entry is None or not 1 <= version <= len(entry.versions):
            raise LookupError(f"{subject} has no registered version {version}")  # as on a 404
        return json.dumps(entry.versions[version - 1])

    async def register(self, subject: str, schema: dict[str, Any]) -> int:
        self.registered[subject] = schema
        schema_id = 1000 + len(self.registered)
        self._by_id[schema_id] = WriterSchema(
            schema_id, subject, fastavro.parse_schema(schema), json.dumps(schema)
        )
        return schema_id
