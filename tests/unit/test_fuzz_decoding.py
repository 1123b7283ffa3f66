"""Bad bytes get a reason, never a crash: the malformed corpus in process, and fuzzing.

The Kafka corpus (``tests/corpus/malformed.py``) runs here through the same validation the
worker runs, without a broker: a quick check of every documented reason. The fuzz tests
(``slow``) feed arbitrary and mutated bytes to the codec, the envelope, ``validate`` and the
gateway's body parsing (directly, and through a real aiohttp server on loopback with a stub
producer): the only exception allowed is :class:`EventError` (Kafka side), the only answers
are 2xx/4xx JSON (HTTP side), each example within its deadline. Whatever the gateway accepts
must pass the pipeline's validation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.gateway.app import Gateway, system_of
from connectors.gateway.auth import Authenticator, basic_credentials
from connectors.gateway.errors import HttpError
from connectors.gateway.govesb import exact_data
from connectors.gateway.strict_json import parse_strict
from deploy.kafka.launcher import free_port
from deploy.worker import DEMO_GATEWAY_KEY, DEMO_GATEWAY_KEY_ID
from streams.contract.codec import WriterSchema, decode_body, encode, schema_id_of
from streams.contract.envelope import Envelope
from streams.contract.reasons import EventError
from streams.contract.signing import load_private_key
from streams.pipeline.duplicates import DuplicateWindow
from streams.pipeline.validation import IngressRecord, ValidEvent, validate
from tests.corpus import raw_http
from tests.corpus.malformed import (
    CITIZEN,
    EVENTS,
    KAFKA_CASES,
    PUSH,
    TOKEN,
    Forge,
    GatewayRequest,
    KafkaCase,
    KafkaRecord,
    citizen_json,
    push_data,
    push_text,
    signed,
    structured,
)
from tests.unit.pipeline_fixtures import (
    CATALOG,
    SAMPLES,
    SCHEMA_IDS,
    SCHEMA_TYPES,
    directory,
    registry_view,
    sample,
)

SAMPLES_CITIZEN = SAMPLES[CITIZEN]

WRITERS = {
    SCHEMA_IDS[e.name]: WriterSchema(SCHEMA_IDS[e.name], e.name, e.parsed, e.schema_text)
    for e in CATALOG
}
DIRECTORY = directory(registry_view(gateway_keys=[DEMO_GATEWAY_KEY_ID]))
FORGE = Forge(SCHEMA_IDS)
ENVELOPE_HEADERS = (
    "ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject",
    "content-type", "ce_correlationid", "ce_sigkeyid", "ce_signature",
)  # fmt: skip


def _validate(record: KafkaRecord, recent: DuplicateWindow, offset: int) -> ValidEvent:
    """What the worker does with one record before routing (``Pipeline.handle``)."""
    writer = None
    if record.value is not None:
        try:
            writer = WRITERS.get(schema_id_of(record.value))
        except EventError:
            writer = None
    ingress = IngressRecord(record.topic, 0, offset, record.key, record.value, record.headers)
    event = validate(ingress, DIRECTORY, writer, dt.datetime.now(dt.UTC))
    recent.check(
        event.envelope.source, event.envelope.id, ingress.position, dt.datetime.now(dt.UTC)
    )
    return event


@pytest.mark.parametrize("case", KAFKA_CASES, ids=lambda case: case.name)
def test_every_kafka_case_gets_its_reason_in_process(case: KafkaCase) -> None:
    recent = DuplicateWindow()
    *leading, last = case.build(FORGE)
    for offset, record in enumerate(leading):
        _validate(record, recent, offset)  # the valid records before the case pass
    if case.reason is None:
        _validate(last, recent, len(leading))
        return
    with pytest.raises(EventError) as refused:
        _validate(last, recent, len(leading))
    assert str(refused.value.reason) == case.reason, refused.value.detail


def test_the_corpus_is_big_and_covers_every_reason() -> None:
    from streams.contract.reasons import ANSWER_REASONS, OUTPUT_REASONS, REQUEST_REASONS, Reason

    assert len(KAFKA_CASES) >= 30
    assert len({case.name for case in KAFKA_CASES}) == len(KAFKA_CASES)
    elsewhere = OUTPUT_REASONS | REQUEST_REASONS | ANSWER_REASONS  # not the event path's
    validation_reasons = {str(reason) for reason in Reason if reason not in elsewhere}
    assert {case.reason for case in KAFKA_CASES} >= validation_reasons


# --------------------------------------------------------------------------- fuzz: Kafka side

slow = pytest.mark.slow
BOUNDED = settings(
    max_examples=300, deadline=dt.timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
GOOD = FORGE.good()
GOOD_VALUE = GOOD.value or b""


@st.composite
def _mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random edits: flips, cuts, insertions, overwrites.

    Every edit draws the same things whatever ``data`` is: the gateway's bodies carry fresh
    ECDSA signatures whose length varies, and hypothesis replays draws on new bodies.
    """
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite", "truncate"]))
        at = draw(st.integers(0, 1 << 16)) % max(1, len(out))
        size, bit = draw(st.integers(1, 8)), draw(st.integers(0, 7))
        byte = draw(st.integers(0, 255))
        inserted = draw(st.binary(min_size=1, max_size=8))
        if kind == "flip" and out:
            out[at] ^= 1 << bit
        elif kind == "cut":
            del out[at : at + size]
        elif kind == "insert":
            out[at:at] = inserted
        elif kind == "overwrite" and out:
            out[at] = byte
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


def _decodes_or_refuses(parsed: Any, value: bytes) -> None:
    with contextlib.suppress(EventError):
        decode_body(parsed, value)


@slow
@BOUNDED
@given(value=st.binary(max_size=64))
def test_schema_ids_of_arbitrary_bytes(value: bytes) -> None:
    reason = None
    try:
        schema_id = schema_id_of(value)
    except EventError as error:
        reason = str(error.reason)
    else:
        assert 0 <= schema_id < 2**32
    assert reason in (None, "wire-format")


@slow
@BOUNDED
@given(
    name=st.sampled_from(sorted(SCHEMA_IDS)),
    body=st.one_of(st.binary(max_size=600), st.data()),
)
def test_arbitrary_and_mutated_avro_bodies_decode_or_are_refused(name: str, body: Any) -> None:
    entry = SCHEMA_TYPES.get(name)  # event types, and the services' requests and responses
    assert entry is not None
    if isinstance(body, bytes):
        value = b"\x00" + SCHEMA_IDS[name].to_bytes(4, "big") + body
    else:
        valid = encode(SCHEMA_IDS[name], entry.parsed, sample(name))
        value = body.draw(_mutated(valid))
    _decodes_or_refuses(entry.parsed, value)


_HEADER_VALUES = st.one_of(
    st.binary(max_size=80),
    st.text(st.characters(exclude_categories=()), max_size=40).map(
        lambda text: text.encode("utf-8", "surrogatepass")
    ),
    st.sampled_from([b"", b"1.0", b"\xc0\xaf", b"\xed\xa0\x80", b"2026-11-27T08:15:00Z",
                     b"9999-12-31T23:59:59.999-23:59", b"0001-01-01T00:00:00+23:59"]),
)  # fmt: skip


@st.composite
def _mutated_records(draw: st.DrawFn) -> IngressRecord:
    """The valid record with headers changed, added, repeated or dropped, and/or its value."""
    headers = list(GOOD.headers)
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(st.sampled_from(ENVELOPE_HEADERS), st.text(max_size=12)))
        action = draw(st.sampled_from(["set", "add", "drop"]))
        if action == "drop":
            headers = [(k, v) for k, v in headers if k != name]
        elif action == "add":
            headers.append((name, draw(_HEADER_VALUES)))
        else:
            headers = [(k, draw(_HEADER_VALUES) if k == name else v) for k, v in headers]
    value: bytes | None = GOOD_VALUE
    if draw(st.booleans()):
        value = draw(st.one_of(st.none(), st.binary(max_size=200), _mutated(GOOD_VALUE)))
    key = draw(st.sampled_from([GOOD.key, None, b"", b"\xff"]))
    topic = draw(st.sampled_from(["esb.ingress.nida", "esb.ingress.rita", "esb.ingress.", "x"]))
    return IngressRecord(topic, 0, 0, key, value, tuple(headers))


@slow
@BOUNDED
@given(record=_mutated_records())
def test_validate_refuses_mutated_records_only_with_event_errors(record: IngressRecord) -> None:
    writer = None
    if record.value is not None and len(record.value) >= 5:
        writer = WRITERS.get(schema_id_of(record.value)) if record.value[0] == 0 else None
    try:
        event = validate(record, DIRECTORY, writer, dt.datetime.now(dt.UTC))
    except EventError:
        return
    assert event.envelope.subject.encode() == (record.key or event.envelope.subject.encode())


@slow
@BOUNDED
@given(
    headers=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(ENVELOPE_HEADERS), st.text(max_size=10)),
            st.one_of(st.none(), _HEADER_VALUES, st.text(st.characters(exclude_categories=()))),
        ),
        max_size=14,
    )
)
def test_envelopes_from_arbitrary_headers_parse_or_are_refused(
    headers: list[tuple[str, bytes | str | None]],
) -> None:
    try:
        envelope = Envelope.from_headers(headers)
    except EventError:
        return
    # What parsed can be written back as headers and signed over.
    for _, value in envelope.to_headers():
        value.decode("utf-8")


# --------------------------------------------------------------------------- fuzz: gateway

_TEXT = st.text(st.characters(exclude_categories=()), max_size=60)


def _with_surrogates(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates as (invalid) UTF-8 bytes


def _only_http_errors(call: Any, *args: Any) -> None:
    status = 400
    try:
        call(*args)
    except HttpError as error:
        status = error.status
    assert 400 <= status < 500


@slow
@BOUNDED
@given(raw=st.one_of(st.binary(max_size=300), _TEXT.map(_with_surrogates)))
def test_json_parsing_of_arbitrary_bytes_gives_a_value_or_400(raw: bytes) -> None:
    _only_http_errors(parse_strict, raw)


@slow
@BOUNDED
@given(text=_TEXT, institution=st.sampled_from(["nida", "rita", ""]), header=_TEXT)
def test_gateway_helpers_take_arbitrary_text(text: str, institution: str, header: str) -> None:
    _only_http_errors(exact_data, text)
    _only_http_errors(system_of, text, institution)
    _only_http_errors(basic_credentials, header)
    _only_http_errors(basic_credentials, "Basic " + header)


@dataclass
class _StubProducer:
    """Keeps what the gateway produces (this test is about parsing, not the broker)."""

    sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)

    async def send_and_wait(
        self, topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        self.sent.append((topic, value, key, headers))


class _StubSchemas:
    async def id_for(self, event_type: Any) -> int:
        return SCHEMA_IDS[event_type.name]


SECRET = "fuzz-client-secret"  # noqa: S105 - a test client's secret
_ACCEPTED: list[str] = []


@pytest.fixture(scope="module")
def served_gateway() -> Iterator[tuple[asyncio.AbstractEventLoop, int, Gateway]]:
    loop = asyncio.new_event_loop()
    # No limit gets in the way: the fuzzer is to reach every path past them.
    auth = Authenticator(
        {"nida": SECRET}, rate_per_s=1e9, burst=1e9, tokens_per_client=10**9,
        token_failures_per_client=10**9, token_failures_per_ip=10**9,
    )  # fmt: skip
    gateway = Gateway(
        view=registry_view(gateway_keys=[DEMO_GATEWAY_KEY_ID]),
        catalog=CATALOG,
        schemas=_StubSchemas(),  # type: ignore[arg-type]
        producer=_StubProducer(),  # type: ignore[arg-type]
        bus_key=load_private_key(DEMO_GATEWAY_KEY.read_text()),
        bus_key_id=DEMO_GATEWAY_KEY_ID,
        auth=auth,
        max_body_bytes=4_000,
    )
    runner = web.AppRunner(gateway.application())
    loop.run_until_complete(runner.setup())
    port = free_port()
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    token = loop.run_until_complete(
        gateway.auth.issue_token(
            "Basic " + base64.b64encode(f"nida:{SECRET}".encode()).decode(),
            {"grant_type": "client_credentials"},
            "127.0.0.1",
        )
    )["access_token"]
    _ACCEPTED.append(token)
    yield loop, port, gateway
    loop.run_until_complete(runner.cleanup())
    loop.close()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
# The sample citizen with one field set to an arbitrary JSON value.
_ONE_FIELD = st.builds(
    lambda name, value: citizen_json(**{name: value}),
    st.sampled_from(sorted(SAMPLES_CITIZEN)),
    _JSON,
)


@st.composite
def _bodies(draw: st.DrawFn, path: str) -> bytes:
    """Arbitrary bytes, arbitrary JSON, near-valid requests, or valid ones mutated."""
    if path == TOKEN:
        valid = b"grant_type=client_credentials"
    elif path == PUSH:
        data = push_data(esbBody=draw(st.one_of(st.just(citizen_json()), _ONE_FIELD, _JSON)))
        text = json.dumps(data, separators=(",", ":"))
        valid = push_text(text, signed(text)).encode()
    else:
        event = structured(data=draw(st.one_of(st.just(citizen_json()), _ONE_FIELD)))
        if draw(st.booleans()):
            event[draw(st.sampled_from(list(event)))] = draw(_JSON)
        valid = json.dumps(event, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    return draw(st.one_of(
        st.just(valid),
        _mutated(valid),
        st.binary(max_size=400),
        _JSON.map(lambda v: json.dumps(v).encode()),
    ))  # fmt: skip


# Control characters are refused by aiohttp's HTTP parser (a plain 400) before the app runs.
_BYTES_HEADER = st.binary(max_size=40).filter(
    lambda b: not set(b) & {*range(9), *range(10, 32), 127} and b.strip() == b
)


@st.composite
def _requests(draw: st.DrawFn) -> tuple[GatewayRequest, bytes | None]:
    path = draw(st.sampled_from([EVENTS, EVENTS, PUSH, PUSH, TOKEN]))
    content_type = draw(st.one_of(
        st.sampled_from([
            "application/json", "application/cloudevents+json",
            "application/x-www-form-urlencoded", "application/json; charset=latin-1",
            "text/plain", None,
        ]),
        _BYTES_HEADER,
    ))  # fmt: skip
    headers = tuple(
        (name, draw(st.one_of(st.sampled_from(["1.0", CITIZEN, "/institutions/nida/systems/x"]),
                              _BYTES_HEADER)))
        for name in draw(st.lists(st.sampled_from(
            ["ce-specversion", "ce-type", "ce-source", "ce-id", "ce-correlationid", "X-API-Key"]
        ), max_size=4, unique=True))
    )  # fmt: skip
    auth = draw(st.one_of(
        st.just(f"Bearer {_ACCEPTED[0]}".encode()),
        st.just(b"Basic " + base64.b64encode(f"nida:{SECRET}".encode())),
        _BYTES_HEADER,
    ))  # fmt: skip
    body = draw(_bodies(path))
    return GatewayRequest(path, body, content_type, headers), auth


@slow
@pytest.mark.http
def test_the_gateway_answers_every_fuzzed_request_without_a_5xx(served_gateway) -> None:
    loop, port, gateway = served_gateway
    producer: _StubProducer = gateway.producer  # type: ignore[assignment]
    statuses: dict[int, int] = {}

    @settings(
        max_examples=400, deadline=dt.timedelta(seconds=2),
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(request=_requests())
    def one(request: tuple[GatewayRequest, bytes | None]) -> None:
        before = len(producer.sent)
        response = loop.run_until_complete(raw_http.send(port, *request, timeout_s=10))
        statuses[response.status] = statuses.get(response.status, 0) + 1
        assert response.status < 500, (request, response)
        if response.status >= 400:
            assert "error" in response.json(), response
        for topic, value, key, headers in producer.sent[before:]:
            # Whatever the gateway accepts, the pipeline accepts.
            record = IngressRecord(topic, 0, len(producer.sent), key, value, tuple(headers))
            writer = WRITERS[schema_id_of(value)]
            validate(record, DIRECTORY, writer, dt.datetime.now(dt.UTC))

    one()
    assert any(status in statuses for status in (200, 202)), statuses
    assert any(400 <= status < 500 for status in statuses), statuses
