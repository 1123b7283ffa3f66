"""Schema governance: ``govesb schemas check`` and ``govesb schemas register``.

Static checks need no network: every ``.avsc`` parses, its name matches its path, every
field is documented, and the catalogue is consistent with the schemas. With a registry, each
schema is also checked against the registered history of its subject at the catalogue's
compatibility level, with ``avro``'s reader/writer checker — the registry is not trusted to
enforce it (Apicurio's Confluent-compatible API accepts incompatible versions).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streams.contract.catalog import Catalog, CatalogError, EventType, Problem, load_schema
from streams.registry.model import BusRegistry


def _documented(schema: Any, path: str) -> Iterator[str]:
    """Paths of record, enum and field definitions that have no ``doc``."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _documented(branch, path)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed") and not schema.get("doc"):
        yield f"{path} ({kind} {schema.get('name')})"
    if kind == "record":
        for field in schema.get("fields", []):
            field_path = f"{path}.{field.get('name')}"
            if not field.get("doc"):
                yield field_path
            yield from _documented(field.get("type"), field_path)
    elif kind == "array":
        yield from _documented(schema.get("items"), f"{path}[]")
    elif kind == "map":
        yield from _documented(schema.get("values"), f"{path}{{}}")
    elif isinstance(kind, dict | list):
        yield from _documented(kind, path)


def check_schema_file(path: Path, schemas_root: Path) -> list[Problem]:
    """Static checks of one ``schemas/<institution>/[history/]<Event>[.vN].avsc``."""
    where = str(path.relative_to(schemas_root.parent))
    try:
        schema = load_schema(path)
    except CatalogError as error:
        return [Problem(where, str(error).split(": ", 1)[-1])]
    problems = []
    in_history = path.parent.name == "history"
    institution = path.parent.parent.name if in_history else path.parent.name
    expected_name = path.stem.split(".")[0] if in_history else path.stem
    if schema.get("name") != expected_name:
        problems.append(Problem(where, f"record name {schema.get('name')!r} != file name"))
    if schema.get("namespace") != f"tz.go.{institution}":
        problems.append(
            Problem(where, f"namespace {schema.get('namespace')!r} != 'tz.go.{institution}'")
        )
    for undocumented in _documented(schema, str(schema.get("name"))):
        problems.append(Problem(where, f"{undocumented} has no doc"))
    return problems


def _is_string(field_type: Any) -> bool:
    return field_type == "string" or (
        isinstance(field_type, dict) and field_type.get("type") == "string"
    )


def check_catalog_consistency(catalog: Catalog) -> list[Problem]:
    """Every declared field exists; every schema file is declared; owners match namespaces."""
    problems = []
    root = catalog.path.parent
    declared = {
        p.resolve() for t in catalog.schema_types() for p in (t.schema_path, *t.history_paths)
    }
    for path in sorted(root.rglob("*.avsc")):
        problems.extend(check_schema_file(path, root))
        if path.resolve() not in declared:
            problems.append(
                Problem(str(path.relative_to(root.parent)), "not declared in catalog.yaml")
            )
    for event_type in catalog:
        where = f"catalog.yaml: event_types.{event_type.name}"
        fields = {f["name"]: f["type"] for f in event_type.schema.get("fields", [])}
        if not event_type.name.startswith(f"tz.go.{event_type.owner}."):
            problems.append(
                Problem(f"{where}.owner", f"{event_type.owner!r} does not own this namespace")
            )
        if event_type.key not in fields:
            problems.append(Problem(f"{where}.key", f"no field {event_type.key!r} in the schema"))
        elif not _is_string(fields[event_type.key]):
            problems.append(
                Problem(f"{where}.key", f"field {event_type.key!r} must be a non-null string")
            )
        for index, name in enumerate(event_type.pii):
            if name not in fields:
                problems.append(Problem(f"{where}.pii[{index}]", f"no field {name!r}"))
        # The declared history must itself have evolved by the declared rule.
        for version in range(1, len(event_type.versions)):
            step = dataclasses.replace(
                event_type,
                schema=event_type.versions[version],
                history=tuple(event_type.versions[:version]),
            )
            known = list(enumerate(event_type.versions[:version], start=1))
            problems.extend(check_evolution(step, known, label="version"))
    for api_code, service in catalog.services.items():
        where = f"catalog.yaml: services.{api_code}"
        for part, record in (("request", service.request), ("response", service.response)):
            if not record.name.startswith(f"tz.go.{service.provider}."):
                problems.append(
                    Problem(f"{where}.{part}", f"{record.name} is not in {service.provider}'s "
                            "namespace")
                )  # fmt: skip
            if record.name in catalog.event_types:
                problems.append(Problem(f"{where}.{part}", f"{record.name} is an event type"))
        for index, name in enumerate(service.pii):
            if name not in service.response.field_names:
                problems.append(Problem(f"{where}.pii[{index}]", f"no field {name!r}"))
    return problems


def compatibility_problems(
    reader: dict[str, Any],
    writer: dict[str, Any],
    reader_name: str = "the reader's schema",
    writer_name: str = "the writer's schema",
) -> list[str]:
    """Why events written with ``writer`` cannot be read with ``reader``; empty if they can.

    Each message names the field and what breaks; the names label the two schemas.
    """
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    reader_schema = avro.schema.parse(json.dumps(reader))
    writer_schema = avro.schema.parse(json.dumps(writer))
    result = checker.get_compatibility(reader_schema, writer_schema)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    if not isinstance(reader_schema, avro.schema.RecordSchema) or not isinstance(
        writer_schema, avro.schema.RecordSchema
    ):
        return sorted(result.messages)
    problems = []
    if reader_schema.fullname != writer_schema.fullname:
        problems.append(
            f"record name changed from {writer_schema.fullname} to {reader_schema.fullname}"
        )
    written = {f.name: f for f in writer_schema.fields}
    for field in reader_schema.fields:
        old = written.get(field.name) or next(
            (written[a] for a in (field.props.get("aliases") or []) if a in written), None
        )
        if old is None:
            if not field.has_default:
                problems.append(
                    f"field '{field.name}' has no default in {reader_name} "
                    f"and is absent from {writer_name}"
                )
            continue
        sub = checker.get_compatibility(field.type, old.type)
        if sub.compatibility is not SchemaCompatibilityType.compatible:
            detail = "; ".join(sorted(m for m in sub.messages if m))
            problems.append(f"field '{field.name}' changed incompatibly: {detail}")
    return problems or sorted(str(m) for m in result.messages)


def check_evolution(
    event_type: EventType,
    history: list[tuple[int, dict[str, Any]]],
    label: str = "registered version",
) -> list[Problem]:
    """Check ``event_type``'s schema against its ``(version, schema)`` history."""
    level = event_type.compatibility
    if level == "NONE" or not history:
        return []
    base = level.removesuffix("_TRANSITIVE")
    versions = history if level.endswith("_TRANSITIVE") else history[-1:]
    problems = []
    where = f"{event_type.schema_path.parent.name}/{event_type.schema_path.name}"
    for version, old in versions:
        if old == event_type.schema:
            continue
        registered = f"{label} {version}"
        if base in ("BACKWARD", "FULL"):
            rule = f"the new schema must read events written with {registered}"
            for message in compatibility_problems(
                event_type.schema, old, "the new schema", registered
            ):
                problems.append(Problem(where, f"{message} — breaks {level} ({rule})"))
        if base in ("FORWARD", "FULL"):
            rule = f"readers on {registered} must read events written with the new schema"
            for message in compatibility_problems(
                old, event_type.schema, registered, "the new schema"
            ):
                problems.append(Problem(where, f"{message} — breaks {level} ({rule})"))
    return problems


async def registered_history(
    client: AsyncSchemaRegistryClient, subject: str
) -> list[tuple[int, dict[str, Any]]]:
    """Every registered ``(version, schema)`` of ``subject``, oldest first; [] if none."""
    history = []
    for version in sorted(await _versions(client, subject)):
        registered = await client.get_version(subject, version)
        history.append((version, json.loads(registered.schema.schema_str or "{}")))
    return history


async def check_against_registry(
    catalog: Catalog, client: AsyncSchemaRegistryClient
) -> list[Problem]:
    """Evolution problems of every catalogue type against the registry."""
    problems = []
    for event_type in catalog.schema_types():
        problems.extend(
            check_evolution(event_type, await registered_history(client, event_type.subject))
        )
    return problems


@dataclass(frozen=True)
class Registration:
    """What ``register`` did for one event type."""

    event_type: str
    schema_id: int
    version: int
    new: bool


async def register_catalog(
    catalog: Catalog, client: AsyncSchemaRegistryClient
) -> tuple[list[Registration], list[Problem]]:
    """Register every schema that is new; refuse (and register nothing) if any is incompatible.

    Also sets each subject's compatibility level in the registry. Idempotent.
    """
    problems = check_catalog_consistency(catalog)
    kinds = catalog.schema_types()
    histories = {t.name: await registered_history(client, t.subject) for t in kinds}
    for event_type in kinds:
        problems.extend(check_evolution(event_type, histories[event_type.name]))
    if problems:
        return [], problems
    done = []
    for event_type in kinds:
        registered = [schema for _, schema in histories[event_type.name]]
        # Superseded versions first, so that version numbers are the same in every registry.
        for version in event_type.versions:
            if version in registered:
                continue
            text = json.dumps(version, separators=(",", ":"))
            await client.register_schema(event_type.subject, Schema(text, "AVRO"))
            registered.append(version)
        schema = Schema(event_type.schema_text, "AVRO")
        found = await client.lookup_schema(event_type.subject, schema)
        await client.set_compatibility(event_type.subject, event_type.compatibility)
        new = event_type.schema not in [s for _, s in histories[event_type.name]]
        done.append(Registration(event_type.name, found.schema_id or 0, found.version or 0, new))
    return done, []


async def pinned_version_problems(
    registry: BusRegistry, client: AsyncSchemaRegistryClient
) -> list[Problem]:
    """Agreements pinned to a schema version the schema registry does not have.

    ``registry lint`` cannot know this (it is offline); ``registry apply`` asks first, so the
    pipeline never routes under an agreement whose delivery schema it cannot resolve.
    """
    versions: dict[str, list[int]] = {}
    problems = []
    for index, subscription in enumerate(registry.document.subscriptions):
        pinned = subscription.schema_version
        if pinned == "latest":
            continue
        for type_index, name in enumerate(subscription.event_types):
            event_type = registry.catalog.get(name)
            if event_type is None:  # lint refuses unknown types before this is asked
                continue
            if event_type.subject not in versions:
                versions[event_type.subject] = await _versions(client, event_type.subject)
            have = versions[event_type.subject]
            if pinned not in have:
                numbers = ", ".join(map(str, sorted(have)))
                known = f"version{'s' if len(have) > 1 else ''} {numbers}" if have else "none"
                problems.append(
                    Problem(
                        path=f"subscriptions[{index}].schema_version",
                        message=f"agreement {subscription.id!r} pins {name} (event_types"
                        f"[{type_index}]) to version {pinned}, but the schema registry has "
                        f"{known} (subject {event_type.subject})",
                    )
                )
    return problems


async def _versions(client: AsyncSchemaRegistryClient, subject: str) -> list[int]:
    """The registered versions of ``subject``; [] if it has none."""
    try:
        return list(await client.get_versions(subject))
    except SchemaRegistryError as error:
        if error.http_status_code == 404:
            return []
        raise
