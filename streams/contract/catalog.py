"""The event catalogue: ``schemas/catalog.yaml`` and the Avro schemas it names.

Schemas are loaded from disk, never copied into code. Each event type has exactly one owner
(the only institution that may publish it), a business-key field and its PII fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fastavro
import yaml

from streams.settings import DEFAULT_CATALOG

COMPATIBILITY_LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)


@dataclass(frozen=True)
class Problem:
    """One finding of a check: where (a file or YAML path) and what is wrong there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class CatalogError(ValueError):
    """The catalogue or one of its schemas is wrong; the message says where."""


@dataclass(frozen=True)
class EventType:
    """One event type of the catalogue."""

    name: str
    owner: str
    schema_path: Path
    schema: dict[str, Any]
    key: str
    pii: tuple[str, ...] = ()
    compatibility: str = "BACKWARD"
    description: str = ""
    history: tuple[dict[str, Any], ...] = ()
    history_paths: tuple[Path, ...] = ()

    @property
    def versions(self) -> list[dict[str, Any]]:
        """Every version of the schema, oldest first; the current one last."""
        return [*self.history, self.schema]

    @cached_property
    def parsed(self) -> Any:
        """The schema parsed by fastavro (parsed once)."""
        return fastavro.parse_schema(self.schema)

    @cached_property
    def schema_text(self) -> str:
        """Canonical JSON text of the schema, as registered."""
        return json.dumps(self.schema, separators=(",", ":"), sort_keys=False)

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        """Top-level field names in schema order."""
        return tuple(f["name"] for f in self.schema.get("fields", []))

    @property
    def subject(self) -> str:
        """Registry subject (RecordNameStrategy): the record's full name."""
        return self.name


@dataclass(frozen=True)
class Service:
    """An API an institution answers (GovESB's ``apiCode``): its request and response records.

    Both are schemas of the provider's namespace, registered like event types; ``pii`` names
    the response fields that hold personal data.
    """

    api_code: str
    provider: str
    request: EventType
    response: EventType
    pii: tuple[str, ...] = ()
    description: str = ""
    key: str = ""  # the request's business-key field (the data tracker finds calls by it)


API_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")
"""What an api code may be: GovESB's are short codes such as ``VERIFY_NIN`` or ``F2ZxK``."""


@dataclass(frozen=True)
class Catalog:
    """All event types, by full name, and the services, by api code."""

    path: Path
    event_types: dict[str, EventType] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def schema_types(self) -> list[EventType]:
        """Every record the schema registry holds for the bus: event types, then each
        service's request and response."""
        return [
            *self.event_types.values(),
            *(t for s in self.services.values() for t in (s.request, s.response)),
        ]

    def service_of(self, type_name: str) -> tuple[Service, str] | None:
        """The service whose request or response record ``type_name`` is, and which of the
        two (``"request"`` or ``"response"``)."""
        for service in self.services.values():
            if service.request.name == type_name:
                return service, "request"
            if service.response.name == type_name:
                return service, "response"
        return None

    def __iter__(self) -> Iterator[EventType]:
        return iter(self.event_types.values())

    def __contains__(self, name: object) -> bool:
        return name in self.event_types

    def __len__(self) -> int:
        return len(self.event_types)

    def get(self, name: str) -> EventType | None:
        """The event type called ``name``, or None."""
        return self.event_types.get(name)

    def owned_by(self, institution: str) -> list[EventType]:
        """Event types ``institution`` may publish."""
        return [t for t in self if t.owner == institution]

    @classmethod
    def load(cls, path: Path = DEFAULT_CATALOG) -> Catalog:
        """Read the catalogue and every schema it names; raise :class:`CatalogError`."""
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise CatalogError(f"{path}: cannot read the catalogue: {error}") from error
        entries = document.get("event_types") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            raise CatalogError(f"{path}: expected a mapping 'event_types'")
        event_types = {}
        for name, entry in entries.items():
            where = f"{path}: event_types.{name}"
            if not isinstance(entry, dict):
                raise CatalogError(f"{where}: expected a mapping")
            for required in ("owner", "schema", "key"):
                if not entry.get(required):
                    raise CatalogError(f"{where}.{required}: missing")
            schema_path = path.parent / str(entry["schema"])
            schema = load_schema(schema_path)
            full_name = f"{schema.get('namespace', '')}.{schema.get('name', '')}".lstrip(".")
            if full_name != name:
                raise CatalogError(f"{where}.schema: {schema_path} defines {full_name}")
            compatibility = str(entry.get("compatibility", "BACKWARD")).upper()
            if compatibility not in COMPATIBILITY_LEVELS:
                raise CatalogError(
                    f"{where}.compatibility: {compatibility!r} is not one of "
                    + ", ".join(COMPATIBILITY_LEVELS)
                )
            history_paths = tuple(path.parent / str(p) for p in entry.get("history") or ())
            history = tuple(load_schema(p) for p in history_paths)
            for old_path, old in zip(history_paths, history, strict=True):
                old_name = f"{old.get('namespace', '')}.{old.get('name', '')}".lstrip(".")
                if old_name != name:
                    raise CatalogError(f"{where}.history: {old_path} defines {old_name}")
            event_types[name] = EventType(
                name=name,
                owner=str(entry["owner"]),
                schema_path=schema_path,
                schema=schema,
                key=str(entry["key"]),
                pii=tuple(entry.get("pii") or ()),
                compatibility=compatibility,
                description=str(entry.get("description", "")),
                history=history,
                history_paths=history_paths,
            )
        return cls(path, event_types, _services(path, document.get("services") or {}))


def _service_record(
    path: Path, where: str, entry: dict[str, Any], part: str, owner: str
) -> EventType:
    if not entry.get(part):
        raise CatalogError(f"{where}.{part}: missing")
    schema_path = path.parent / str(entry[part])
    schema = load_schema(schema_path)
    full_name = f"{schema.get('namespace', '')}.{schema.get('name', '')}".lstrip(".")
    return EventType(
        name=full_name,
        owner=owner,
        schema_path=schema_path,
        schema=schema,
        key="",  # a request's Kafka key is its request id
        compatibility=str(entry.get("compatibility", "BACKWARD")).upper(),
        description=str(schema.get("doc", "")),
    )


def _services(path: Path, entries: Any) -> dict[str, Service]:
    if not isinstance(entries, dict):
        raise CatalogError(f"{path}: 'services' must be a mapping of api codes")
    services = {}
    for api_code, entry in entries.items():
        where = f"{path}: services.{api_code}"
        if not isinstance(api_code, str) or not API_CODE.match(api_code):
            raise CatalogError(f"{where}: an api code is 2-64 letters, digits, '_', '.' or '-'")
        if not isinstance(entry, dict) or not entry.get("provider"):
            raise CatalogError(f"{where}.provider: missing")
        provider = str(entry["provider"])
        request = _service_record(path, where, entry, "request", provider)
        response = _service_record(path, where, entry, "response", provider)
        if request.name == response.name:
            raise CatalogError(f"{where}: request and response must be different records")
        services[api_code] = Service(
            api_code=api_code,
            provider=provider,
            request=request,
            response=response,
            pii=tuple(entry.get("pii") or ()),
            description=str(entry.get("description", "")),
            key=str(entry.get("key") or ""),
        )
        if services[api_code].key and services[api_code].key not in request.field_names:
            raise CatalogError(f"{where}.key: the request has no field {entry['key']!r}")
    return services


def load_schema(path: Path) -> dict[str, Any]:
    """Read one ``.avsc`` file; check it parses; raise :class:`CatalogError` otherwise."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CatalogError(f"{path}: cannot read: {error}") from error
    except json.JSONDecodeError as error:
        raise CatalogError(f"{path}: not JSON: {error}") from error
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise CatalogError(f"{path}: the top level must be one Avro record")
    try:
        fastavro.parse_schema(schema)
    except Exception as error:  # fastavro raises several unrelated types
        raise CatalogError(f"{path}: not a valid Avro schema: {error}") from error
    return schema
