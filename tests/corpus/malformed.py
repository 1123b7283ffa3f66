"""Malformed inputs, as data: each starts from a valid signed event and changes one thing.

``KAFKA_CASES`` go to ``esb.ingress.<publisher>`` and must come back on
``esb.rejected.<publisher>`` with their ``esb_reason`` (``reason``), or be delivered when
``reason`` is None. ``GATEWAY_CASES`` go to the HTTP gateway and must get their status and
error code (and failing field, where one is named); never a 500. ``why`` documents the rule
that refuses each one: the reason table in ``deploy/ONBOARDING.md`` and the gateway's
refusals in ``README.md`` say the same.

Builders get a forge that knows the registered schema ids and the institutions' demo keys,
so the same corpus runs in process (``tests/unit/test_fuzz_decoding.py``), through a real
worker (``tests/integration/test_malformed_corpus.py``) and through a real gateway.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from streams.contract.catalog import Catalog
from streams.contract.codec import encode
from streams.contract.envelope import new_envelope
from streams.contract.jsonavro import to_json
from streams.contract.signing import PrivateKey, load_private_key, sign_event
from streams.pipeline.outputs import record_size
from streams.pipeline.process import Output
from streams.settings import REPO_ROOT
from tests.corpus.govesb_clients import NON_ASCII_NAME, connector_body, connector_data
from tests.unit.pipeline_fixtures import CATALOG, KEY_IDS, sample

CITIZEN = "tz.go.nida.CitizenRegistered"
DEATH = "tz.go.rita.DeathRegistered"
PAYMENT = "tz.go.tra.TaxPaymentReceived"
UNREGISTERED_SCHEMA_ID = 0xFFFFFFFF
MAX_VALUE_BYTES = 1_000_000  # the worker's default GOVESB_MAX_VALUE_BYTES
# A record (key, value, headers) the broker takes, with room for the test's marking headers,
# whose rejected copy it would not take.
NEAR_BROKER_LIMIT_BYTES = 1_048_440


def demo_key(institution: str) -> PrivateKey:
    """The demo private key of ``institution`` (``deploy/demo-keys``)."""
    return load_private_key((REPO_ROOT / f"deploy/demo-keys/{institution}.key.pem").read_text())


# --------------------------------------------------------------------------- Kafka


class RawName(str):
    """A header name sent as arbitrary bytes: what a careless producer can put on the wire
    (aiokafka's pure-Python batch builder calls ``encode`` on the name)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode(errors="replace"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


@dataclass(frozen=True)
class KafkaRecord:
    """A record to produce to an ingress topic: headers in order, repeats allowed."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def first(self, name: str) -> bytes | None:
        """The first value of header ``name``."""
        return next((v for k, v in self.headers if k == name), None)

    def set(self, name: str, value: bytes | str | None) -> KafkaRecord:
        """Header ``name`` replaced where it first stands (added if absent); None drops it."""
        if value is None:
            return replace(self, headers=tuple((k, v) for k, v in self.headers if k != name))
        raw = value.encode() if isinstance(value, str) else value
        if self.first(name) is None:
            return replace(self, headers=(*self.headers, (name, raw)))
        index = next(i for i, (k, _) in enumerate(self.headers) if k == name)
        headers = list(self.headers)
        headers[index] = (name, raw)
        return replace(self, headers=tuple(headers))

    def add(self, name: str, value: bytes | str) -> KafkaRecord:
        """Another occurrence of header ``name``, after the others."""
        raw = value.encode() if isinstance(value, str) else value
        return replace(self, headers=(*self.headers, (name, raw)))

    def with_value(self, value: bytes | None) -> KafkaRecord:
        """The same record with another value."""
        return replace(self, value=value)


@dataclass
class Forge:
    """Builds valid signed events, and re-signs changed ones, with the demo keys."""

    schema_ids: Mapping[str, int]
    catalog: Catalog = CATALOG
    _keys: dict[str, PrivateKey] = field(default_factory=dict)

    def key(self, institution: str) -> PrivateKey:
        """The institution's demo private key (loaded once)."""
        if institution not in self._keys:
            self._keys[institution] = demo_key(institution)
        return self._keys[institution]

    def payload(self, event_type: str = CITIZEN, **changes: Any) -> dict[str, Any]:
        """The sample payload of ``event_type`` with ``changes``."""
        return sample(event_type, **changes)

    def encode(self, event_type: str, payload: dict[str, Any]) -> bytes:
        """``payload`` in wire format under ``event_type``'s registered schema id."""
        entry = self.catalog.get(event_type)
        assert entry is not None
        return encode(self.schema_ids[event_type], entry.parsed, payload)

    def good(
        self,
        institution: str = "nida",
        event_type: str = CITIZEN,
        payload: dict[str, Any] | None = None,
        *,
        time: dt.datetime | None = None,
    ) -> KafkaRecord:
        """A valid event, signed by ``institution``, with a new id."""
        entry = self.catalog.get(event_type)
        assert entry is not None
        body = payload if payload is not None else self.payload(event_type)
        envelope = new_envelope(institution, "corpus", event_type, body[entry.key], time=time)
        record = KafkaRecord(
            f"esb.ingress.{institution}",
            envelope.subject.encode(),
            self.encode(event_type, body),
            tuple(envelope.to_headers()),
        )
        return self.sign(record, institution)

    def sign(self, record: KafkaRecord, institution: str = "nida") -> KafkaRecord:
        """``record`` signed by ``institution`` over its current headers and value."""
        attributes = [
            (record.first(name) or b"").decode()
            for name in ("ce_id", "ce_source", "ce_type", "ce_time")
        ]
        signature = sign_event(self.key(institution), *attributes, record.value or b"")
        return record.set("ce_sigkeyid", KEY_IDS[institution]).set("ce_signature", signature)


@dataclass(frozen=True)
class KafkaCase:
    """One malformed ingress record and the reason the pipeline gives it.

    ``build`` returns the records to send in order: all but the last are valid and must be
    delivered; the last is the case itself.
    """

    name: str
    reason: str | None
    why: str
    build: Callable[[Forge], list[KafkaRecord]]


def _one(change: Callable[[Forge], KafkaRecord]) -> Callable[[Forge], list[KafkaRecord]]:
    return lambda forge: [change(forge)]


def _missing(header: str) -> KafkaCase:
    return KafkaCase(
        f"missing-{header}",
        "missing-header",
        f"{header} is required (missing-header names every absent one)",
        _one(lambda f: f.good().set(header, None)),
    )


def _resigned_value(change: Callable[[bytes], bytes]) -> Callable[[Forge], list[KafkaRecord]]:
    """The value changed and signed again: only the payload rules can refuse it."""

    def build(forge: Forge) -> list[KafkaRecord]:
        good = forge.good()
        return [forge.sign(good.with_value(change(good.value or b"")))]

    return build


def _with_schema_id(schema_id: int) -> Callable[[bytes], bytes]:
    return lambda value: b"\x00" + schema_id.to_bytes(4, "big") + value[5:]


def _other_schema(forge: Forge) -> list[KafkaRecord]:
    good = forge.good()
    value = good.value or b""
    return [forge.sign(good.with_value(_with_schema_id(forge.schema_ids[PAYMENT])(value)))]


def _future(forge: Forge) -> list[KafkaRecord]:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return [forge.good(time=later)]


def _time_reformatted(forge: Forge) -> list[KafkaRecord]:
    good = forge.good()
    text = (good.first("ce_time") or b"").decode()
    return [good.set("ce_time", text.replace("Z", "+00:00"))]  # the same instant, not signed


def _source_mismatch(forge: Forge) -> list[KafkaRecord]:
    return [replace(forge.good(), topic="esb.ingress.rita")]


def _not_owner(forge: Forge) -> list[KafkaRecord]:
    return [forge.good("nida", DEATH, forge.payload(DEATH))]


def _unknown_type(forge: Forge) -> list[KafkaRecord]:
    return [forge.sign(forge.good().set("ce_type", "tz.go.nida.CitizenMoved"))]


def _subject_not_key(forge: Forge) -> list[KafkaRecord]:
    other = "19990101000000000001"
    good = forge.good()
    return [replace(good.set("ce_subject", other), key=other.encode())]


def _unicode_subject(forge: Forge) -> list[KafkaRecord]:
    composed = "1990011414101000é"  # é as one code point (NFC)
    decomposed = unicodedata.normalize("NFD", composed)
    good = forge.good(payload=forge.payload(nin=composed))
    return [replace(good.set("ce_subject", decomposed), key=decomposed.encode())]


def _key_not_subject(forge: Forge) -> list[KafkaRecord]:
    return [replace(forge.good(), key=b"19990101000000000001")]


def _foreign_key_id(forge: Forge) -> list[KafkaRecord]:
    return [forge.sign(forge.good(), "rita")]


def _tampered(forge: Forge) -> list[KafkaRecord]:
    good = forge.good()
    value = bytearray(good.value or b"")
    value[-2] ^= 0x01
    return [good.with_value(bytes(value))]


def _signature_of_another(forge: Forge) -> list[KafkaRecord]:
    other = forge.good()
    return [forge.good().set("ce_signature", other.first("ce_signature"))]


def _invalid_utf8_in_avro(value: bytes) -> bytes:
    assert b"Neema" in value
    return value.replace(b"Neema", b"N\xffema", 1)


def _overlong_utf8_in_avro(value: bytes) -> bytes:
    return value.replace(b"Neema", b"N\xc0\xaema", 1)  # "." as an overlong two-byte sequence


def _oversize(forge: Forge) -> list[KafkaRecord]:
    good = forge.good()
    value = good.value or b""
    return [good.with_value(value + b"\x00" * (MAX_VALUE_BYTES + 100 - len(value)))]


def _oversize_near_broker_limit(forge: Forge) -> list[KafkaRecord]:
    # The broker stores it (1,048,588 bytes a batch, 61 of them the batch's header), but its
    # rejected copy, with the reason headers, is over the producer's 1 MiB request limit:
    # the worker must cut the copy, not retry it for ever.
    good = forge.good()
    value = good.value or b""
    size = record_size(Output(good.topic, good.key, value, good.headers))
    return [good.with_value(value + b"\x00" * (NEAR_BROKER_LIMIT_BYTES - size))]


def _duplicate(forge: Forge) -> list[KafkaRecord]:
    good = forge.good()
    return [good, good]


def _repeated_header_second_differs(forge: Forge) -> list[KafkaRecord]:
    return [forge.good().add("ce_type", "tz.go.nida.CitizenMoved")]


def _repeated_header_first_invalid(forge: Forge) -> list[KafkaRecord]:
    good = forge.good()
    event_id = good.first("ce_id") or b""
    return [good.set("ce_id", "not-a-uuid").add("ce_id", event_id)]


KAFKA_CASES: list[KafkaCase] = [
    *(
        _missing(header)
        for header in (
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "ce_sigkeyid",
            "ce_signature",
        )
    ),
    KafkaCase(
        "no-headers",
        "missing-header",
        "a bare Avro value: no envelope at all",
        _one(lambda f: replace(f.good(), headers=())),
    ),
    KafkaCase(
        "empty-ce_type",
        "missing-header",
        "an empty header counts as absent",
        _one(lambda f: f.good().set("ce_type", b"")),
    ),
    KafkaCase(
        "repeated-ce_type-second-differs",
        None,
        "the first occurrence of a header counts (it is what was signed); the bus rebuilds "
        "the headers of what it delivers, so the second never travels on",
        _repeated_header_second_differs,
    ),
    KafkaCase(
        "repeated-ce_id-first-invalid",
        "invalid-header",
        "the first occurrence counts, so a valid second ce_id does not repair an invalid first",
        _repeated_header_first_invalid,
    ),
    KafkaCase(
        "ce_subject-not-utf8",
        "invalid-header",
        "header values must be UTF-8",
        _one(lambda f: f.good().set("ce_subject", b"\xff\xfe1990")),
    ),
    KafkaCase(
        "ce_source-overlong-utf8",
        "invalid-header",
        "an overlong UTF-8 sequence (0xC0 0xAF for '/') is not UTF-8",
        _one(lambda f: f.good().set("ce_source", b"\xc0\xafinstitutions/nida/systems/corpus")),
    ),
    KafkaCase(
        "ce_specversion-with-bom",
        "invalid-header",
        "ce_specversion must be exactly 1.0 (a leading BOM is not)",
        _one(lambda f: f.good().set("ce_specversion", "\ufeff1.0")),
    ),
    KafkaCase(
        "ce_id-not-uuid",
        "invalid-header",
        "ce_id must be a UUID",
        _one(lambda f: f.good().set("ce_id", "order-42")),
    ),
    KafkaCase(
        "ce_id-uuid-without-hyphens",
        "invalid-header",
        "ce_id must be a UUID in its canonical 8-4-4-4-12 form",
        _one(lambda f: f.good().set("ce_id", uuid.uuid4().hex)),
    ),
    KafkaCase(
        "ce_time-not-rfc3339",
        "invalid-header",
        "ce_time must be an RFC 3339 time",
        _one(lambda f: f.good().set("ce_time", "27/11/2026 08:15")),
    ),
    KafkaCase(
        "ce_time-without-offset",
        "invalid-header",
        "ce_time must carry its UTC offset",
        _one(lambda f: f.good().set("ce_time", "2026-11-27T08:15:00")),
    ),
    KafkaCase(
        "ce_time-in-the-future",
        "future-time",
        "ce_time more than 5 minutes ahead of the bus (signed, so only the clock rule refuses)",
        _future,
    ),
    KafkaCase(
        "ce_time-reformatted-after-signing",
        "bad-signature",
        "the signature covers ce_time exactly as carried: the same instant written otherwise "
        "does not verify",
        _time_reformatted,
    ),
    KafkaCase(
        "ce_specversion-0.3",
        "invalid-header",
        "ce_specversion must be 1.0",
        _one(lambda f: f.good().set("ce_specversion", "0.3")),
    ),
    KafkaCase(
        "content-type-json",
        "invalid-header",
        "publishers send application/avro only",
        _one(lambda f: f.good().set("content-type", "application/json")),
    ),
    KafkaCase(
        "ce_source-malformed",
        "invalid-header",
        "ce_source must be /institutions/<institution>/systems/<system>",
        _one(lambda f: f.good().set("ce_source", "nida/corpus")),
    ),
    KafkaCase(
        "ce_source-homoglyph-institution",
        "invalid-header",
        "institution ids are ASCII: a Cyrillic 'a' (U+0430) in nida is not nida",
        _one(lambda f: f.good().set("ce_source", "/institutions/nid\u0430/systems/corpus")),
    ),
    KafkaCase(
        "source-topic-mismatch",
        "source-mismatch",
        "ce_source names nida but the record is on rita's ingress topic",
        _source_mismatch,
    ),
    KafkaCase(
        "unknown-type",
        "unknown-type",
        "ce_type is not an event type in the registry (signed, so only that rule refuses)",
        _unknown_type,
    ),
    KafkaCase(
        "type-of-another-institution",
        "not-owner",
        "nida publishes rita's DeathRegistered on its own topic, signed with its own key",
        _not_owner,
    ),
    KafkaCase(
        "kafka-key-not-ce_subject",
        "invalid-header",
        "the Kafka key must be ce_subject (per-key order follows the business key)",
        _key_not_subject,
    ),
    KafkaCase(
        "no-magic-byte",
        "wire-format",
        "the value must start with 0x00 (signed, so only the wire-format rule refuses)",
        _resigned_value(lambda value: b"\x01" + value[1:]),
    ),
    KafkaCase(
        "json-value",
        "wire-format",
        "a JSON value is not Confluent wire format",
        _resigned_value(lambda _: b'{"nin": "19900114141010000125"}'),
    ),
    KafkaCase(
        "short-value",
        "wire-format",
        "fewer than the 5 header bytes",
        _resigned_value(lambda value: value[:3]),
    ),
    KafkaCase(
        "empty-value",
        "wire-format",
        "an empty value has no wire-format header",
        _resigned_value(lambda _: b""),
    ),
    KafkaCase(
        "tombstone",
        "wire-format",
        "a null value (tombstone) is not an event",
        _one(lambda f: f.good().with_value(None)),
    ),
    KafkaCase(
        "unknown-schema-id",
        "unknown-schema-id",
        "schema id 0xFFFFFFFF is not registered",
        _resigned_value(_with_schema_id(UNREGISTERED_SCHEMA_ID)),
    ),
    KafkaCase(
        "schema-id-of-another-subject",
        "schema-mismatch",
        "the schema id is TaxPaymentReceived's, the type CitizenRegistered",
        _other_schema,
    ),
    KafkaCase(
        "truncated-avro",
        "undecodable",
        "the Avro record ends early",
        _resigned_value(lambda value: value[:12]),
    ),
    KafkaCase(
        "trailing-bytes",
        "trailing-bytes",
        "bytes after the end of the Avro record",
        _resigned_value(lambda value: value + b"\x00\x02"),
    ),
    KafkaCase(
        "avro-string-not-utf8",
        "undecodable",
        "an Avro string must be UTF-8 (0xFF in firstName)",
        _resigned_value(_invalid_utf8_in_avro),
    ),
    KafkaCase(
        "avro-string-overlong-utf8",
        "undecodable",
        "an overlong UTF-8 sequence in an Avro string is not UTF-8",
        _resigned_value(_overlong_utf8_in_avro),
    ),
    KafkaCase(
        "oversize-value",
        "oversize",
        "the value is over 1,000,000 bytes (checked before anything else)",
        _oversize,
    ),
    KafkaCase(
        "oversize-value-near-the-broker-limit",
        "oversize",
        "a 1,048,440-byte record: its value is over 1,000,000 bytes; its rejected copy, too "
        "large for the producer, comes back cut (no value, header esb_cut) with the reason",
        _oversize_near_broker_limit,
    ),
    KafkaCase(
        "ce_subject-not-payload-key",
        "invalid-payload",
        "ce_subject (and the Kafka key) differ from the payload's key field nin",
        _subject_not_key,
    ),
    KafkaCase(
        "ce_subject-other-unicode-normalisation",
        "invalid-payload",
        "ce_subject is compared code point for code point: NFD 'é' is not the payload's NFC",
        _unicode_subject,
    ),
    KafkaCase(
        "unknown-key-id",
        "unknown-key",
        "ce_sigkeyid is not a registered key",
        _one(lambda f: f.good().set("ce_sigkeyid", "nida-000000000000")),
    ),
    KafkaCase(
        "key-id-of-another-institution",
        "unknown-key",
        "signed with rita's registered key, on nida's topic for nida's source",
        _foreign_key_id,
    ),
    KafkaCase(
        "tampered-payload",
        "bad-signature",
        "one payload bit flipped after signing",
        _tampered,
    ),
    KafkaCase(
        "signature-of-another-event",
        "bad-signature",
        "a valid signature of another event by the same key",
        _signature_of_another,
    ),
    KafkaCase(
        "signature-not-base64",
        "bad-signature",
        "ce_signature is not base64",
        _one(lambda f: f.good().set("ce_signature", "not base64!")),
    ),
    KafkaCase(
        "signature-base64-not-der",
        "bad-signature",
        "ce_signature is base64 of something that is not a DER signature",
        _one(lambda f: f.good().set("ce_signature", "bm9uc2Vuc2U=")),
    ),
    KafkaCase(
        "duplicate-event-id",
        "duplicate",
        "the same event again at another offset within 24 h (the first is delivered)",
        _duplicate,
    ),
]


# --------------------------------------------------------------------------- gateway


@dataclass(frozen=True)
class GatewayRequest:
    """An HTTP request as bytes on the wire allow: header values may be raw bytes.

    ``auth`` None: the test adds ``Authorization: Bearer <nida's token>``.
    """

    path: str
    body: bytes
    content_type: str | bytes | None = "application/cloudevents+json"
    headers: tuple[tuple[str, str | bytes], ...] = ()
    auth: str | bytes | None = None
    chunked: bool = False


@dataclass(frozen=True)
class GatewayCase:
    """One malformed HTTP request and the refusal the gateway documents for it."""

    name: str
    status: int
    error: str
    field: str | None
    why: str
    build: Callable[[], GatewayRequest]


EVENTS = "/v1/events"
PUSH = "/engine/esb/push-request"
TOKEN = "/oauth/token"  # noqa: S105 - a path
MAX_BODY_BYTES = 20_000  # the corpus gateway's max_body_bytes
_ABSENT = object()  # a member to leave out


def citizen_json(**changes: Any) -> dict[str, Any]:
    """The sample citizen as JSON, with a name of its own (pushes must not repeat)."""
    unique = {"firstName": f"Neema-{uuid.uuid4().hex[:8]}"}
    return {**to_json(sample(CITIZEN, **unique)), **changes}


def structured(**changes: Any) -> dict[str, Any]:
    """A valid structured-mode CloudEvent of nida's, with ``changes``."""
    event = {"specversion": "1.0", "id": str(uuid.uuid4()), "type": CITIZEN,
             "source": "/institutions/nida/systems/crvs", "data": citizen_json()}  # fmt: skip
    return {k: v for k, v in {**event, **changes}.items() if v is not _ABSENT}


def _events(text: str | bytes, content_type: str | bytes | None = None) -> GatewayRequest:
    body = text.encode() if isinstance(text, str) else text
    if content_type is None:
        return GatewayRequest(EVENTS, body)
    return GatewayRequest(EVENTS, body, content_type)


def _event(**changes: Any) -> Callable[[], GatewayRequest]:
    return lambda: _events(json.dumps(structured(**changes)))


def _event_text(make: Callable[[str], str]) -> Callable[[], GatewayRequest]:
    """A structured event whose JSON text ``make`` rewrites."""
    return lambda: _events(make(json.dumps(structured())))


def _binary(*headers: tuple[str, str | bytes], body: Any = None) -> Callable[[], GatewayRequest]:
    base: dict[str, str | bytes] = {
        "ce-specversion": "1.0",
        "ce-type": CITIZEN,
        "ce-source": "/institutions/nida/systems/crvs",
    }
    for name, value in headers:
        base[name] = value
    kept = tuple((k, v) for k, v in base.items() if v != "")
    text = json.dumps(citizen_json() if body is None else body).encode()
    return lambda: GatewayRequest(EVENTS, text, "application/json", kept)


def push_data(push_code: str = CITIZEN, **changes: Any) -> dict[str, Any]:
    """The ``data`` member of a push of a citizen."""
    data = {"pushCode": push_code, "requestId": str(uuid.uuid4()), "esbBody": citizen_json()}
    return {k: v for k, v in {**data, **changes}.items() if v is not _ABSENT}


def push_text(data_text: str, signature: str) -> str:
    """The push body as GovESB client libraries write it."""
    return f'{{"data":{data_text},"signature":"{signature}"}}'


def signed(data_text: str, institution: str = "nida") -> str:
    """Base64 DER ECDSA of ``data_text``'s UTF-8 bytes by ``institution``'s demo key."""
    return demo_key(institution).sign(data_text.encode())


def _push(body: str | bytes, content_type: str | None = "application/json") -> GatewayRequest:
    raw = body.encode() if isinstance(body, str) else body
    return GatewayRequest(PUSH, raw, content_type)


def _signed_push(data: Callable[[], dict[str, Any]] | None = None) -> Callable[[], GatewayRequest]:
    def build() -> GatewayRequest:
        text = json.dumps((data or push_data)(), separators=(",", ":"))
        return _push(push_text(text, signed(text)))

    return build


def _signed_push_text(make: Callable[[], str]) -> Callable[[], GatewayRequest]:
    """A push whose data text (``make``) is signed exactly as written."""

    def build() -> GatewayRequest:
        text = make()
        return _push(push_text(text, signed(text)))

    return build


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _reserialised() -> GatewayRequest:
    data = push_data()
    signature = signed(_compact(data))
    return _push(push_text(json.dumps(data, indent=1), signature))  # other whitespace


def _trailing_junk() -> GatewayRequest:
    text = _compact(push_data())
    return _push(push_text(text, signed(text) + "AAAA"))


def _signature_of_other_data() -> GatewayRequest:
    text = _compact(push_data())
    return _push(push_text(text, signed(_compact(push_data()))))


def _duplicate_data_member() -> GatewayRequest:
    text = _compact(push_data())
    evil = _compact(push_data(esbBody=citizen_json(firstName="Mallory")))
    return _push(f'{{"data":{text},"signature":"{signed(text)}","data":{evil}}}')


def _nested_data_first() -> GatewayRequest:
    text = _compact(push_data())
    return _push(f'{{"meta":{{"data":1}},"data":{text},"signature":"{signed(text)}"}}')


def _spaced_members() -> GatewayRequest:
    text = _compact(push_data())
    return _push(f'{{"data" : {text}, "signature" : "{signed(text)}"}}')


def _deep(depth: int = 50_000) -> str:
    return "[" * depth + "]" * depth


def _basic(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return b"Basic " + base64.b64encode(raw)


def _token(
    body: str = "grant_type=client_credentials",
    content_type: str | bytes = "application/x-www-form-urlencoded",
    auth: str | bytes | None = "",
) -> Callable[[], GatewayRequest]:
    return lambda: GatewayRequest(TOKEN, body.encode(), content_type, auth=auth)


def _connector_push(
    content_type: str = "application/json",
    sign_as: Callable[[str], bytes] = lambda text: text.encode("utf-8"),
    name: str = NON_ASCII_NAME,
    **members: Any,
) -> Callable[[], GatewayRequest]:
    """A push as connector 0.1.5 sends it (ISO-8859-1 body), signed over ``sign_as(data)``."""

    def build() -> GatewayRequest:
        text = connector_data(pushCode=CITIZEN, esbBody=citizen_json(lastName=name), **members)
        return _push(connector_body(text, demo_key("nida").sign(sign_as(text))), content_type)

    return build


def _utf16_event() -> GatewayRequest:
    return _events(json.dumps(structured()).encode("utf-16"))


GATEWAY_CASES: list[GatewayCase] = [
    # ---- POST /v1/events, structured mode
    GatewayCase("events-invalid-json", 400, "invalid_json", None, "not JSON",
                lambda: _events('{"specversion": "1.0",')),
    GatewayCase("events-json-array", 400, "invalid_event", None, "a CloudEvent is an object",
                lambda: _events("[1, 2]")),
    GatewayCase("events-json-string", 400, "invalid_event", None, "a CloudEvent is an object",
                lambda: _events('"hello"')),
    GatewayCase("events-missing-data", 400, "invalid_data", "data", "data is required",
                _event(data=_ABSENT)),
    GatewayCase("events-data-not-object", 400, "invalid_data", CITIZEN,
                "data must be the event type's record", _event(data="Neema")),
    GatewayCase("events-data-field-wrong-type", 400, "invalid_data", f"{CITIZEN}.firstName",
                "firstName must be a string: the failing field is named",
                lambda: _events(json.dumps(structured(data=citizen_json(firstName=5))))),
    GatewayCase("events-data-bad-date", 400, "invalid_data", "CitizenRegistered.dateOfBirth",
                "a date field needs an ISO date",
                lambda: _events(json.dumps(structured(data=citizen_json(dateOfBirth="14/01"))))),
    GatewayCase("events-key-field-empty", 400, "invalid_data", "nin",
                "the key field becomes ce_subject and must not be empty",
                lambda: _events(json.dumps(structured(data=citizen_json(nin=""))))),
    GatewayCase("events-missing-specversion", 400, "invalid_event", "specversion",
                "specversion is required", _event(specversion=_ABSENT)),
    GatewayCase("events-specversion-number", 400, "invalid_event", "specversion",
                "attributes are strings: 1.0 the number is not '1.0'", _event(specversion=1.0)),
    GatewayCase("events-missing-type", 400, "invalid_event", "type", "type is required",
                _event(type=_ABSENT)),
    GatewayCase("events-type-not-string", 400, "invalid_event", "type", "type is a string",
                _event(type=["tz.go.nida.CitizenRegistered"])),
    GatewayCase("events-unknown-type", 404, "unknown_type", None, "not in the registry",
                _event(type="tz.go.nida.CitizenMoved")),
    GatewayCase("events-type-of-another-institution", 403, "not_owner", None,
                "nida's token cannot publish rita's type", _event(type=DEATH)),
    GatewayCase("events-source-of-another-institution", 403, "source_mismatch", "source",
                "the source must name the caller's institution",
                _event(source="/institutions/rita/systems/crvs")),
    GatewayCase("events-source-system-with-slash", 400, "invalid_event", "source",
                "a system name has no / (the pipeline would refuse its ce_source)",
                _event(source="/institutions/nida/systems/crvs/extra")),
    GatewayCase("events-id-not-uuid", 400, "invalid_event", "id", "id must be a UUID",
                _event(id="order-42")),
    GatewayCase("events-correlationid-not-string", 400, "invalid_event", "correlationid",
                "correlationid is a string", _event(correlationid={"a": 1})),
    GatewayCase("events-lone-surrogate-in-data", 400, "invalid_json", None,
                "a \\ud800 escape is no Unicode character; Avro strings are UTF-8",
                _event_text(lambda t: t.replace('"Neema-', '"\\ud800Neema-'))),
    GatewayCase("events-lone-surrogate-in-source", 400, "invalid_json", None,
                "attributes must be Unicode too",
                _event_text(lambda t: t.replace("systems/crvs", "systems/crvs\\udc80"))),
    GatewayCase("events-invalid-utf8", 400, "invalid_json", None, "the body must be UTF-8",
                lambda: _events(json.dumps(structured()).encode().replace(b"Neema", b"N\xffema"))),
    GatewayCase("events-overlong-utf8", 400, "invalid_json", None,
                "an overlong UTF-8 sequence is not UTF-8",
                lambda: _events(json.dumps(structured()).encode().replace(b"Neema",
                                                                          b"N\xc0\xaema"))),
    GatewayCase("events-utf8-encoded-surrogate", 400, "invalid_json", None,
                "UTF-8 never encodes a surrogate (ED A0 80)",
                lambda: _events(json.dumps(structured()).encode().replace(b"Neema",
                                                                          b"N\xed\xa0\x80a"))),
    GatewayCase("events-utf16", 400, "invalid_json", None, "JSON on the wire is UTF-8",
                _utf16_event),
    GatewayCase("events-utf8-bom", 400, "invalid_json", None, "no byte order mark",
                lambda: _events(b"\xef\xbb\xbf" + json.dumps(structured()).encode())),
    GatewayCase("events-duplicate-keys", 400, "invalid_json", None,
                "two 'type' members: parsers disagree on which counts",
                _event_text(lambda t: t.replace('"type":', '"type": "tz.go.x.Y", "type":', 1))),
    GatewayCase("events-deep-nesting", 400, "invalid_json", None,
                "nesting deeper than the parser's limit",
                lambda: _events(f'{{"specversion": "1.0", "data": {_deep(5_000)}}}')),
    GatewayCase("events-nan", 400, "invalid_json", None, "NaN is not JSON",
                _event_text(lambda t: t.replace('"specversion": "1.0"',
                                                '"specversion": "1.0", "x": NaN'))),
    GatewayCase("events-huge-integer", 400, "invalid_json", None,
                "an integer of 5,000 digits is refused by the parser",
                _event_text(lambda t: t.replace('"specversion": "1.0"',
                                                '"specversion": "1.0", "x": ' + "9" * 5000))),
    GatewayCase("events-too-large", 413, "too_large", None, "over max_body_bytes",
                lambda: _events(json.dumps(structured(padding="x" * MAX_BODY_BYTES)))),
    GatewayCase("events-too-large-chunked", 413, "too_large", None,
                "over max_body_bytes without a Content-Length",
                lambda: replace(_events(json.dumps(structured(padding="x" * MAX_BODY_BYTES))),
                                chunked=True)),
    GatewayCase("events-text-plain", 415, "unsupported_media_type", None,
                "CloudEvents JSON only", lambda: _events("hello", "text/plain")),
    GatewayCase("events-no-content-type", 415, "unsupported_media_type", None,
                "no Content-Type is not JSON",
                lambda: replace(_events(json.dumps(structured())), content_type=None)),
    # ---- POST /v1/events, binary mode
    GatewayCase("binary-source-not-utf8", 400, "invalid_event", "source",
                "header values must be UTF-8",
                _binary(("ce-source", b"/institutions/nida/systems/\xff"))),
    GatewayCase("binary-correlationid-not-utf8", 400, "invalid_event", "correlationid",
                "header values must be UTF-8", _binary(("ce-correlationid", b"\xc0\xaf"))),
    GatewayCase("binary-missing-specversion", 400, "invalid_event", "specversion",
                "ce-specversion is required", _binary(("ce-specversion", ""))),
    GatewayCase("binary-data-array", 400, "invalid_data", CITIZEN,
                "the body must be the event type's record", _binary(body=[1, 2])),
    GatewayCase("binary-unknown-type", 404, "unknown_type", None, "not in the registry",
                _binary(("ce-type", "tz.go.nida.Nothing"))),
    # ---- POST /engine/esb/push-request
    GatewayCase("push-invalid-json", 400, "invalid_json", None, "not JSON",
                lambda: _push('{"data": {')),
    GatewayCase("push-json-array", 400, "invalid_request", None, "a push is an object",
                lambda: _push("[]")),
    GatewayCase("push-missing-data", 400, "invalid_request", None, "data is required",
                lambda: _push('{"signature":"AAAA"}')),
    GatewayCase("push-missing-signature", 400, "invalid_request", None,
                "signature is required", lambda: _push(f'{{"data":{_compact(push_data())}}}')),
    GatewayCase("push-signature-not-string", 400, "invalid_request", "signature",
                "signature is a base64 string",
                lambda: _push(f'{{"data":{_compact(push_data())},"signature":12}}')),
    GatewayCase("push-signature-not-base64", 401, "invalid_signature", None,
                "not base64: does not verify",
                lambda: _push(push_text(_compact(push_data()), "not base64!"))),
    GatewayCase("push-signature-trailing-junk", 401, "invalid_signature", None,
                "a valid signature followed by more base64 does not verify", _trailing_junk),
    GatewayCase("push-signature-over-reserialised-data", 401, "invalid_signature", None,
                "signed compact, sent indented: the signature covers the exact bytes",
                _reserialised),
    GatewayCase("push-signature-of-other-data", 401, "invalid_signature", None,
                "a valid signature of another push", _signature_of_other_data),
    GatewayCase("push-signed-by-another-institution", 401, "invalid_signature", None,
                "signed with rita's key, sent with nida's token",
                lambda: _push(push_text(t := _compact(push_data()), signed(t, "rita")))),
    GatewayCase("push-unknown-pushcode", 404, "unknown_type", None, "not in the registry",
                _signed_push(lambda: push_data("tz.go.nida.CitizenMoved"))),
    GatewayCase("push-missing-pushcode", 400, "invalid_request", "data.pushCode",
                "pushCode is required", _signed_push(lambda: push_data(pushCode=_ABSENT))),
    GatewayCase("push-pushcode-not-string", 400, "invalid_request", "data.pushCode",
                "pushCode is a string", _signed_push(lambda: push_data(pushCode=["x"]))),
    GatewayCase("push-pushcode-of-another-institution", 403, "not_owner", None,
                "nida signs rita's type", _signed_push(lambda: push_data(DEATH))),
    GatewayCase("push-esbbody-field-wrong-type", 400, "invalid_data", f"{CITIZEN}.firstName",
                "firstName must be a string: the failing field is named",
                _signed_push(lambda: push_data(esbBody=citizen_json(firstName=["x"])))),
    GatewayCase("push-esbbody-missing", 400, "invalid_data", "data.esbBody",
                "esbBody is required", _signed_push(lambda: push_data(esbBody=_ABSENT))),
    GatewayCase("push-data-not-object", 400, "invalid_request", "data.pushCode",
                "data is an object", _signed_push_text(lambda: '"hello"')),
    GatewayCase("push-duplicate-keys-in-data", 400, "invalid_json", None,
                "two pushCode members in the signed data: parsers disagree on which counts",
                _signed_push_text(lambda: _compact(push_data()).replace(
                    '{"pushCode":', '{"pushCode":"tz.go.x.Y","pushCode":', 1))),
    GatewayCase("push-second-data-member", 400, "invalid_json", None,
                "a second, unsigned data member after the signature must not be published",
                _duplicate_data_member),
    GatewayCase("push-nested-data-key-first", 400, "invalid_request", None,
                'the "data": cut must be the top-level member and nothing else',
                _nested_data_first),
    GatewayCase("push-spaced-members", 400, "invalid_request", None,
                'the data bytes are cut between "data": and ,"signature" exactly',
                _spaced_members),
    GatewayCase("push-lone-surrogate-in-esbbody", 400, "invalid_json", None,
                "a signed \\udc80 escape is still no Unicode character",
                _signed_push_text(lambda: _compact(push_data()).replace('"Neema-',
                                                                        '"\\udc80Neema-'))),
    GatewayCase("push-utf8-encoded-surrogate", 400, "invalid_json", None,
                "UTF-8 never encodes a surrogate",
                lambda: _push(push_text(_compact(push_data()), "AAAA").encode().replace(
                    b"Neema", b"N\xed\xb2\x80a"))),
    GatewayCase("push-overlong-utf8", 400, "invalid_json", None, "not UTF-8",
                lambda: _push(push_text(_compact(push_data()), "AAAA").encode().replace(
                    b"Neema", b"N\xc0\xaema"))),
    GatewayCase("push-utf16", 400, "invalid_json", None, "JSON on the wire is UTF-8",
                lambda: _push(push_text(t := _compact(push_data()), signed(t)).encode("utf-16"))),
    GatewayCase("push-deep-nesting", 400, "invalid_json", None, "nesting beyond the limit",
                lambda: _push(push_text(_deep(5_000), "AAAA"))),
    GatewayCase("push-text-plain", 415, "unsupported_media_type", None, "JSON only",
                lambda: _push(push_text(t := _compact(push_data()), signed(t)), "text/plain")),
    # ---- POST /engine/esb/push-request as GovESB's clients send it (tests.corpus.govesb_clients)
    GatewayCase("push-latin1-signed-over-latin1-bytes", 401, "invalid_signature", None,
                "an ISO-8859-1 body is verified over its UTF-8 form, which was not signed",
                _connector_push(sign_as=lambda text: text.encode("latin-1"))),
    GatewayCase("push-latin1-declared-signed-over-latin1-bytes", 401, "invalid_signature",
                None, "declared ISO-8859-1 too: only the UTF-8 form is verified",
                _connector_push("text/plain; charset=ISO-8859-1",
                                sign_as=lambda text: text.encode("latin-1"))),
    GatewayCase("push-latin1-character-outside-latin1", 401, "invalid_signature", None,
                "connector 0.1.5 sends Ł as ?, so what arrives is not what it signed",
                _connector_push(name="Łucja Mwakyusa")),
    GatewayCase("push-text-plain-utf8", 415, "unsupported_media_type", None,
                "text/plain only as Apache StringEntity's ISO-8859-1 default",
                _connector_push("text/plain; charset=UTF-8")),
    GatewayCase("push-token-in-data-unknown", 401, "invalid_token", None,
                "a token inside the signed data must be a live token of the caller",
                _connector_push(authorization="not-a-live-token")),
    GatewayCase("push-token-in-data-not-string", 400, "invalid_request", "data.authorization",
                "the token inside the data is a string",
                _signed_push(lambda: push_data(authorization=["x"]))),
    GatewayCase("push-requestid-not-echoable", 400, "invalid_request", "data.requestId",
                "the signed reply echoes requestId: a control character is no portable text",
                _signed_push(lambda: push_data(requestId="order\u0007"))),
    GatewayCase("push-raw-token-unknown", 401, "invalid_token", None,
                "engine paths take a raw token (connector 0.1.5); it must be a live one",
                lambda: replace(_signed_push()(), auth="not-a-live-token")),
    GatewayCase("events-raw-token", 401, "unauthenticated", None,
                "/v1/events keeps Authorization: Bearer <token> (RFC 6750)",
                lambda: replace(_events(json.dumps(structured())), auth="not-a-live-token")),
    GatewayCase("push-too-large", 413, "too_large", None, "over max_body_bytes",
                _signed_push(lambda: push_data(esbBody=citizen_json(ward="x" * MAX_BODY_BYTES)))),
    # ---- POST /oauth/token and authentication
    GatewayCase("token-json-body", 415, "unsupported_media_type", None,
                "OAuth2 token requests are form-encoded",
                _token('{"grant_type": "client_credentials"}', "application/json")),
    GatewayCase("token-missing-grant-type", 400, "unsupported_grant_type", None,
                "grant_type=client_credentials is required", _token("scope=publish")),
    GatewayCase("token-no-client-auth", 401, "invalid_client", None, "HTTP Basic is required",
                _token(auth=None)),
    GatewayCase("token-basic-not-base64", 401, "invalid_client", None, "malformed Basic",
                _token(auth="Basic ***")),
    GatewayCase("token-basic-not-utf8", 401, "invalid_client", None, "malformed Basic",
                _token(auth=_basic(b"nida:\xff\xfe"))),
    GatewayCase("token-non-ascii-secret", 401, "invalid_client", None,
                "a wrong secret, whatever its characters", _token(auth=_basic("nida:sécret"))),
    GatewayCase("token-raw-bytes-in-authorization", 401, "invalid_client", None,
                "header bytes that are not UTF-8", _token(auth=b"Basic \xff\xfe")),
    GatewayCase("token-unknown-charset", 400, "invalid_request", None,
                "a charset Python does not know",
                _token(content_type="application/x-www-form-urlencoded; charset=x-klingon")),
    GatewayCase("events-api-key-non-ascii", 401, "invalid_api_key", None,
                "a wrong API key, whatever its bytes",
                lambda: replace(_events(json.dumps(structured())),
                                headers=(("X-API-Key", "sécret".encode()),), auth="")),
    GatewayCase("events-bearer-not-utf8", 401, "invalid_token", None, "unknown token",
                lambda: replace(_events(json.dumps(structured())), auth=b"Bearer \xff\xfe")),
]  # fmt: skip
