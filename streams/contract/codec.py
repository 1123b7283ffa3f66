"""Avro payloads in the Confluent wire format, with schemas from the registry.

Wire format: byte ``0x00``, the 4-byte big-endian schema id, then the schemaless Avro
encoding (fastavro). Subjects follow RecordNameStrategy (subject = record full name), so one
topic carries many event types and any Confluent client can produce or consume.

Writer schemas are fetched once per id and kept parsed; the hot path does no registry call.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import fastavro
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.validation import ValidationError, validate

from streams.contract.catalog import EventType
from streams.contract.reasons import EventError, Reason

log = logging.getLogger(__name__)

MAGIC = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size


class RegistryUnavailableError(RuntimeError):
    """The schema registry could not be asked (network, 5xx): retry, do not reject."""


def encode(schema_id: int, parsed_schema: Any, record: Any) -> bytes:
    """Encode ``record`` with the Confluent wire format header for ``schema_id``."""
    out = BytesIO()
    out.write(HEADER.pack(MAGIC, schema_id))
    fastavro.schemaless_writer(out, parsed_schema, record)
    return out.getvalue()


def schema_errors(record: Any, parsed_schema: Any) -> list[Any] | None:
    """None when ``record`` is valid for the schema; else fastavro's errors (each with
    ``field``, ``schema`` and ``datum``; empty when its two checks disagree, which is invalid).

    The quiet check first: with ``raise_errors``, fastavro raises (and catches) a JSON-formatted
    error for every union branch it tries before the one that fits, ~6x the cost for a record
    with optional fields given. Only an invalid record is checked again, for what is wrong.

    Raises:
        ValueError, TypeError: a date, time or decimal field fastavro cannot convert.
    """
    if validate(record, parsed_schema, raise_errors=False):
        return None
    try:
        validate(record, parsed_schema, raise_errors=True)
    except ValidationError as error:
        return list(error.errors)
    return []


def schema_id_of(data: bytes) -> int:
    """The schema id in a wire-format value; raise :class:`EventError` if it is not one."""
    if len(data) < HEADER_SIZE or data[0] != MAGIC:
        raise EventError(
            Reason.WIRE_FORMAT,
            "value is not in Confluent wire format (0x00 + 4-byte schema id + Avro)",
        )
    return int(HEADER.unpack_from(data)[1])


def decode_body(parsed_schema: Any, data: bytes) -> Any:
    """Decode the Avro body after the header; every byte must belong to the record."""
    body = BytesIO(data)
    body.seek(HEADER_SIZE)
    try:
        record = fastavro.schemaless_reader(body, parsed_schema, None)
    except Exception as error:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
        raise EventError(
            Reason.UNDECODABLE, f"payload does not decode with its schema: {error}"
        ) from None
    if body.tell() != len(data):
        raise EventError(
            Reason.TRAILING_BYTES,
            f"{len(data) - body.tell()} byte(s) after the end of the Avro record",
        )
    return record


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A registered schema, parsed once."""

    id: int
    full_name: str
    parsed: Any
    text: str


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded payload and the schema it was written with."""

    schema: WriterSchema
    record: Any


class SchemaStore:
    """Registry access with the caches the hot path needs.

    ``writer_schema(id)`` asks the registry once per id; ``id_for(event_type)`` once per
    schema text. Both keep working from cache when the registry is down.
    """

    def __init__(self, client: AsyncSchemaRegistryClient) -> None:
        self._client = client
        self._by_id: dict[int, WriterSchema] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._texts: dict[tuple[str, str], str] = {}

    @property
    def client(self) -> AsyncSchemaRegistryClient:
        """The underlying confluent-kafka registry client."""
        return self._client

    def cached(self, schema_id: int) -> WriterSchema | None:
        """The parsed schema for ``schema_id`` if already known (no I/O)."""
        return self._by_id.get(schema_id)

    async def writer_schema(self, schema_id: int) -> WriterSchema:
        """The schema registered under ``schema_id``; :class:`EventError` if there is none."""
        known = self._by_id.get(schema_id)
        if known is not None:
            return known
        try:
            registered = await self._client.get_schema(schema_id)
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                raise EventError(
                    Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is not registered"
                ) from None
            raise RegistryUnavailableError(f"schema registry: {error}") from error
        except Exception as error:  # httpx transport errors and timeouts
            raise RegistryUnavailableError(f"schema registry unreachable: {error}") from error
        if registered.schema_type not in (None, "AVRO"):
            raise EventError(
                Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} is {registered.schema_type}"
            )
        text = registered.schema_str or ""
        raw = json.loads(text)
        full_name = (
            f"{raw.get('namespace', '')}.{raw.get('name', '')}".lstrip(".")
            if isinstance(raw, dict)
            else ""
        )
        schema = WriterSchema(schema_id, full_name, fastavro.parse_schema(raw), text)
        self._by_id[schema_id] = schema
        return schema

    async def id_for(self, event_type: EventType, *, register: bool = False) -> int:
        """The id of ``event_type``'s current schema; register it first when ``register``."""
        cache_key = (event_type.subject, event_type.schema_text)
        known = self._ids.get(cache_key)
        if known is not None:
            return known
        schema = Schema(event_type.schema_text, "AVRO")
        schema_id: int | None
        try:
            if register:
                schema_id = await self._client.register_schema(event_type.subject, schema)
            else:
                found = await self._client.lookup_schema(event_type.subject, schema)
                schema_id = found.schema_id
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                raise LookupError(
                    f"{event_type.name}: this schema version is not registered; "
                    "run `govesb schemas register`"
                ) from None
            raise RegistryUnavailableError(f"schema registry: {error}") from error
        except Exception as error:
            raise RegistryUnavailableError(f"schema registry unreachable: {error}") from error
        if schema_id is None:
            raise RegistryUnavailableError(f"schema registry gave no id for {event_type.name}")
        self._ids[cache_key] = schema_id
        self._by_id.setdefault(
            schema_id,
            WriterSchema(schema_id, event_type.name, event_type.parsed, event_type.schema_text),
        )
        return schema_id

    async def version_text(self, subject: str, version: int) -> str:
        """The schema text of ``subject``'s registered ``version`` (cached)."""
        key = (subject, f"#{version}")
        if key in self._texts:
            return self._texts[key]
        try:
            registered = await self._client.get_version(subject, version)
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                raise LookupError(f"{subject} has no registered version {version}") from None
            raise RegistryUnavailableError(f"schema registry: {error}") from error
        except Exception as error:
            raise RegistryUnavailableError(f"schema registry unreachable: {error}") from error
        self._texts[key] = registered.schema.schema_str or ""
        return self._texts[key]

    async def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under the bus-owned ``subject`` (idempotent); its id (cached).

        Only the bus writes these subjects (delivery schemas), and a new version follows an
        agreement change the subscriber accepted, so a registry enforcing compatibility on
        them (Confluent's default is BACKWARD; Apicurio enforces a subject's level once set)
        gets the subject's level set to NONE and the registration is tried again.
        """
        text = json.dumps(schema, separators=(",", ":"))
        known = self._ids.get((subject, text))
        if known is not None:
            return known
        try:
            try:
                schema_id = await self._client.register_schema(subject, Schema(text, "AVRO"))
            except SchemaRegistryError as refused:
                if refused.http_status_code not in (409, 422):
                    raise
                log.warning(
                    "schema registry refused a new version of %s (%s); setting the subject's "
                    "compatibility to NONE", subject, refused.error_message,
                )  # fmt: skip
                await self._client.set_compatibility(subject_name=subject, level="NONE")
                schema_id = await self._client.register_schema(subject, Schema(text, "AVRO"))
        except Exception as error:
            raise RegistryUnavailableError(
                f"schema registry, subject {subject}: {error}"
            ) from error
        self._ids[(subject, text)] = schema_id
        return schema_id

    async def decode(self, data: bytes) -> Decoded:
        """Decode a wire-format value (registry asked only for an unseen schema id)."""
        schema_id = schema_id_of(data)
        schema = self._by_id.get(schema_id) or await self.writer_schema(schema_id)
        return Decoded(schema, decode_body(schema.parsed, data))
