"""W3C trace context: parsing and making ``traceparent``, the headers each hop writes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streams.client.publisher import _created_in
from streams.contract.tracecontext import (
    CE_TRACEPARENT,
    CE_TRACESTATE,
    TRACEPARENT,
    TRACESTATE,
    TraceParent,
    contexts,
    retraced,
    trace_headers,
)
from streams.pipeline.process import Outcome, Output, traced
from streams.settings import REPO_ROOT, TracingSettings
from streams.tracing import SpanKind, Tracing, remote
from tests.unit.pipeline_fixtures import prepared

W3C_EXAMPLE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C


def test_the_w3c_example_is_read_and_written_back_the_same() -> None:
    parent = TraceParent.parse(W3C_EXAMPLE, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert parent == TraceParent(
        TRACE_ID, 0xB7AD6B7169203331, 1, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    )
    assert parent.header() == W3C_EXAMPLE
    assert parent.sampled
    assert parent.trace_id_hex == "0af7651916cd43dd8448eb211c80319c"
    assert TraceParent.parse(W3C_EXAMPLE.encode()) == TraceParent(TRACE_ID, 0xB7AD6B7169203331)


def test_a_child_keeps_the_trace_flags_and_state_with_a_new_parent_id() -> None:
    parent = TraceParent.parse(W3C_EXAMPLE.replace("-01", "-00"), "rojo=1")
    assert parent is not None
    children = {parent.child() for _ in range(100)}
    assert len({child.span_id for child in children}) == 100
    for child in children:
        assert (child.trace_id, child.flags, child.state) == (TRACE_ID, 0, "rojo=1")
        assert child.span_id != parent.span_id
        assert TraceParent.parse(child.header()) == TraceParent(TRACE_ID, child.span_id, 0)


def test_a_new_trace_is_sampled_with_random_ids() -> None:
    roots = [TraceParent.new() for _ in range(100)]
    assert len({root.trace_id for root in roots}) == 100
    for root in roots:
        assert root.sampled
        assert root.state == ""
        assert len(root.header()) == 55
        assert TraceParent.parse(root.header()) == root


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper-case hex
        W3C_EXAMPLE + "-extra",  # version 00 has exactly four fields
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # a digit short
        W3C_EXAMPLE.replace("-", "_"),
        W3C_EXAMPLE + "\n",
        "0" * 600,
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-\xff",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0\udcff",  # lone surrogate
    ],
)
def test_what_is_not_a_traceparent_is_none(value: str | bytes | None) -> None:
    assert TraceParent.parse(value) is None


def test_a_later_version_is_read_for_the_fields_it_shares_with_00() -> None:
    later = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next"
    assert TraceParent.parse(later) == TraceParent(TRACE_ID, 0xB7AD6B7169203331, 1)
    # and it is passed on as version 00, the only one this bus writes
    assert TraceParent.parse(later).header() == W3C_EXAMPLE  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "state", ["x" * 513, "rojo=\x00", "rojo=caf\u00e9", b"rojo=\xff", "a=1\nb=2"]
)
def test_a_tracestate_not_printable_ascii_or_too_long_is_dropped(state: str | bytes) -> None:
    assert TraceParent.parse(W3C_EXAMPLE, state) == TraceParent(TRACE_ID, 0xB7AD6B7169203331)


_HEX = "0123456789abcdefABCDEF"
_field = st.text(alphabet=_HEX + "-x \t", min_size=0, max_size=34)
_traceparents = st.one_of(
    st.builds(
        lambda v, t, s, f, rest: f"{v}-{t}-{s}-{f}{rest}",
        st.sampled_from(["00", "01", "cc", "ff", "0g", "0"]),
        st.one_of(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
                  st.just("0" * 32), _field),
        st.one_of(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
                  st.just("0" * 16), _field),
        st.sampled_from(["00", "01", "ff", "1", "0x"]),
        st.sampled_from(["", "-", "-x", " ", "\t", "x", "--"]),
    ),
    st.text(max_size=80).filter(lambda text: "\n" not in text),
)  # fmt: skip


@given(_traceparents)
def test_the_parser_accepts_exactly_what_opentelemetry_accepts(value: str) -> None:
    context = TraceContextTextMapPropagator().extract({TRACEPARENT: value})
    theirs = trace.get_current_span(context).get_span_context()
    ours = TraceParent.parse(value)
    if not theirs.is_valid:
        assert ours is None
    else:
        assert ours == TraceParent(theirs.trace_id, theirs.span_id, int(theirs.trace_flags))


def test_a_record_says_its_hop_and_its_creation_the_first_occurrence_counting() -> None:
    hop, creation = TraceParent.new(), TraceParent.new()
    headers = [
        ("ce_id", b"x"),
        *creation.headers(creation=True),
        (CE_TRACEPARENT, TraceParent.new().header().encode()),
        *hop.headers(),
    ]
    assert contexts(headers) == (hop, creation)
    assert contexts([("ce_id", b"x")]) == (None, None)
    assert contexts([(TRACEPARENT, b"nonsense"), (CE_TRACEPARENT, hop.header().encode())]) == (
        None,
        hop,
    )


def test_a_hop_replaces_every_trace_header_and_keeps_the_others_in_order() -> None:
    old = TraceParent(1, 2, 1, "old=1")
    hop, creation = TraceParent(3, 4, 1, "new=1"), TraceParent(3, 5)
    headers = [("ce_id", b"x"), *old.headers(), *old.headers(creation=True), ("esb_reason", b"y")]
    assert retraced(headers, trace_headers(hop, creation)) == (
        ("ce_id", b"x"),
        ("esb_reason", b"y"),
        (CE_TRACEPARENT, b"00-00000000000000000000000000000003-0000000000000005-01"),
        (TRACEPARENT, b"00-00000000000000000000000000000003-0000000000000004-01"),
        (TRACESTATE, b"new=1"),
    )
    assert CE_TRACESTATE not in dict(retraced(headers, trace_headers(hop, creation)))


def test_every_output_of_the_worker_carries_its_hop_and_the_events_creation() -> None:
    creation = TraceParent.new()
    hop = creation.child()
    outcome = Outcome(
        [
            Output("esb.deliver.moh", b"k", b"v", (("ce_id", b"1"),)),
            Output("esb.rejected.rita", b"k", b"v", (("ce_id", b"1"), *creation.headers())),
            Output("esb.audit", b"k", b"v"),
        ],
        "rita",
        "tz.go.rita.DeathRegistered",
    )
    for output in traced(outcome, hop, creation).outputs:
        assert contexts(output.headers) == (hop, creation)
        assert [name for name, _ in output.headers].count(TRACEPARENT) == 1


def test_without_an_endpoint_a_hop_is_a_child_and_no_span() -> None:
    tracing = Tracing(TracingSettings(), "govesb-worker")
    parent = TraceParent.new()
    hop = tracing.start("process esb.ingress.rita", parent, SpanKind.CONSUMER)
    assert not tracing.exporting
    assert hop.span is None
    assert (hop.context.trace_id, hop.context.flags) == (parent.trace_id, parent.flags)
    assert hop.context.span_id != parent.span_id
    assert tracing.start("x", None, SpanKind.SERVER).context.trace_id != parent.trace_id
    hop.end("rejected")  # nothing to end: no error either


def test_a_process_without_an_endpoint_never_loads_the_opentelemetry_sdk() -> None:
    code = (
        "import sys, connectors.gateway.app, connectors.http_sink.sink, streams.pipeline.app, "
        "streams.client.publisher; print(any(m.startswith('opentelemetry.sdk') for m in "
        "sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "False"


def test_the_endpoint_setting_is_one_http_url() -> None:
    assert TracingSettings(otlp_endpoint="").otlp_endpoint is None
    url = "http://127.0.0.1:4318/v1/traces"
    assert TracingSettings(otlp_endpoint=url).otlp_endpoint == url
    for wrong in (
        "collector:4318",
        "ftp://x/v1/traces",
        "http://a/v1/traces,http://b/v1/traces",
        "https://user:secret@collector/v1/traces",
    ):
        with pytest.raises(ValueError, match="otlp_endpoint") as refused:
            TracingSettings(otlp_endpoint=wrong)
        # what `govesb` prints of it (streams.cli.common): never the value
        assert "secret" not in str(refused.value.errors(include_input=False))


def test_a_published_event_carries_the_context_it_was_created_in_as_both_pairs() -> None:
    created = TraceParent.new()
    event = prepared("rita", "tz.go.rita.DeathRegistered", trace=created)
    headers = event.headers
    assert contexts(headers) == (created, created)
    assert [name for name, _ in headers][: len(event.envelope.to_headers())] == [
        name for name, _ in event.envelope.to_headers()
    ]


def test_without_an_sdk_the_publisher_is_a_child_of_the_given_context_or_a_new_trace() -> None:
    given = TraceParent.parse(W3C_EXAMPLE, "rojo=1")
    assert given is not None
    created = _created_in(remote(given), given)
    assert (created.trace_id, created.state) == (TRACE_ID, "rojo=1")
    assert created.span_id != given.span_id
    assert _created_in(trace.INVALID_SPAN, None).trace_id not in (0, TRACE_ID)
