"""Trace context end to end through real processes: a CloudEvent POSTed with a ``traceparent``
to a real ``govesb connect gateway`` reaches a real HTTP endpoint through a real worker and
``govesb connect http-sink`` in the same trace; with an OTLP endpoint set, the three services'
spans of that trace reach a real OTLP/HTTP receiver (an aiohttp server, decoded with
opentelemetry-proto)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from typer.testing import CliRunner

from connectors.cli import app
from connectors.http_sink.delivery import basic_auth
from deploy.kafka.launcher import LauncherError, free_port
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID, DEMO_GATEWAY_ENV, start_govesb
from streams.contract.tracecontext import TraceParent
from streams.settings import REPO_ROOT
from tests.unit.pipeline_fixtures import SAMPLES

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.http, pytest.mark.slow]
DEATH = "tz.go.rita.DeathRegistered"
SYSTEM = f"crvs-tracing-{uuid.uuid4().hex[:8]}"
SOURCE = f"/institutions/rita/systems/{SYSTEM}"
SECRET = f"rita-tracing-secret-{uuid.uuid4().hex}"


class LegacyEndpoint:
    """The subscriber's HTTP endpoint: the headers of every request of this module's events."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.arrived = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if request.headers.get("ce-source") == SOURCE:
            async with self.arrived:
                self.received.append({k.lower(): v for k, v in request.headers.items()})
                self.arrived.notify_all()
        return web.json_response({"ok": True})

    async def requests_for(self, event_id: str, seconds: float) -> list[dict[str, str]]:
        """The requests of ``event_id`` once there is one (empty after ``seconds``)."""
        async with self.arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait_for(lambda: self._of(event_id)), seconds)
            return self._of(event_id)

    async def request_in(self, event_id: str, trace_id: int, seconds: float) -> dict[str, str]:
        """The request of ``event_id`` in trace ``trace_id``. Another test's worker on the
        shared bus may deliver a copy of its own first (its own hop, or none)."""

        def found() -> dict[str, str] | None:
            for headers in self._of(event_id):
                hop = TraceParent.parse(headers.get("traceparent"))
                if hop is not None and hop.trace_id == trace_id:
                    return headers
            return None

        async with self.arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait_for(lambda: found() is not None), seconds)
            request = found()
        assert request is not None, f"none in trace {trace_id:032x}: {self._of(event_id)}"
        return request

    def _of(self, event_id: str) -> list[dict[str, str]]:
        return [headers for headers in self.received if headers.get("ce-id") == event_id]


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]
    event_id: str  # its cloudevents.event_id attribute


class OtlpReceiver:
    """An OTLP/HTTP traces receiver: what the processes export, decoded."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.exported = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        async with self.exported:
            for resource_spans in export.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [
                        Span(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                             s.parent_span_id.hex(), tuple(link.span_id.hex() for link in s.links),
                             next((a.value.string_value for a in s.attributes
                                   if a.key == "cloudevents.event_id"), ""))
                        for s in scope_spans.spans
                    ]  # fmt: skip
            self.exported.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def spans_of(
        self, trace_id: str, event_id: str, services: set[str], seconds: float
    ) -> list[Span]:
        """The spans of ``trace_id`` once every one of ``services`` exported one of
        ``event_id``."""

        def found() -> list[Span]:
            return [s for s in self.spans if s.trace_id == trace_id]

        def complete() -> bool:
            return services <= {s.service for s in found() if s.event_id == event_id}

        async with self.exported:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exported.wait_for(complete), seconds)
            return found()


@dataclass
class Bus:
    gateway: str
    endpoint: LegacyEndpoint
    apply: Callable[[], Awaitable[None]]
    processes: list[Any] = field(default_factory=list)


async def _served(handler: Any, path: str) -> tuple[web.AppRunner, str]:
    application = web.Application()
    application.router.add_post(path, handler)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}{path}"


@contextlib.asynccontextmanager
async def _bus(
    kafka: str, registry: str, start_worker: Any, tmp_path: Path, otlp: str | None
) -> AsyncIterator[Bus]:
    """A subscriber of this test's own with an HTTP agreement for deaths, and real processes:
    a worker, ``govesb connect http-sink`` for it and ``govesb connect gateway`` (``otlp``:
    every one of them exporting its spans there)."""
    endpoint = LegacyEndpoint()
    endpoint_runner, url = await _served(endpoint.handle, "/esb/deaths")
    name = f"tracing-{uuid.uuid4().hex[:8]}"
    document = yaml.safe_load((REPO_ROOT / "deploy/registry.example.yaml").read_text())
    document["catalog"] = str(REPO_ROOT / "schemas/catalog.yaml")
    document["institutions"].append(
        {"id": name, "name": "Tracing test", "systems": ["hcmis"],
         "endpoint": {"url": url, "timeout_s": 5}}
    )  # fmt: skip
    document["subscriptions"].append(
        {"id": f"{name}-deaths", "subscriber": name, "purpose": "Tracing test deliveries.",
         "event_types": [DEATH], "delivery": "http",
         "fields": ["entryNumber", "deceasedNin", "dateOfDeath"]}
    )  # fmt: skip
    edited = tmp_path / "registry.yaml"
    edited.write_text(yaml.safe_dump(document))

    async def apply() -> None:
        applied = await asyncio.to_thread(
            CliRunner().invoke, app, ["--bootstrap", kafka, "--schema-registry", registry,
                                      "registry", "apply", str(edited)]
        )  # fmt: skip
        assert applied.exit_code == 0, applied.output

    await apply()
    tracing = (
        {"GOVESB_TRACING__OTLP_ENDPOINT": otlp, "GOVESB_TRACING__EXPORT_INTERVAL_S": "0.2"}
        if otlp
        else {}
    )
    common = {
        "GOVESB_KAFKA__BOOTSTRAP_SERVERS": kafka,
        "GOVESB_SCHEMA_REGISTRY__URL": registry,
        **tracing,
    }
    bus = Bus("", endpoint, apply)
    try:
        # In threads: the endpoint and the receiver answer from this loop meanwhile.
        bus.processes.append(await asyncio.to_thread(start_worker, env=tracing))
        sink_port, gateway_port = free_port(), free_port()
        sink_env = {**common, "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
                    "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID}  # fmt: skip
        gateway_env = {**common, **DEMO_GATEWAY_ENV, "GOVESB_CLIENTS__RITA": SECRET}
        for args, env, port in (
            (["connect", "http-sink", "--subscriber", name], sink_env, sink_port),
            (["connect", "gateway"], gateway_env, gateway_port),
        ):
            for attempt in range(3):
                try:
                    started = await asyncio.to_thread(
                        start_govesb,
                        [*args, "--web-port", str(port)],
                        env,
                        tmp_path / f"{args[1]}-{attempt}.log",
                        port,
                        lambda body: body["status"] == "ok",
                    )
                    break
                except LauncherError as error:
                    # Another test's `registry apply` on the shared bus dropped the subscriber
                    # before its sink read it: apply again.
                    if "has no HTTP endpoint" not in str(error) or attempt == 2:
                        raise
                    await apply()
            bus.processes.append(started)
        bus.gateway = f"http://127.0.0.1:{gateway_port}"
        yield bus
    finally:
        for process in reversed(bus.processes[1:]):  # the worker is the fixture's to stop
            await asyncio.to_thread(process.stop)
        await endpoint_runner.cleanup()


async def _post_death(bus: Bus, headers: dict[str, str]) -> str:
    """A death POSTed as a structured CloudEvent with ``headers``; its id once delivered
    (re-applying the test's registry when another test's `registry apply` dropped it)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{bus.gateway}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_auth("rita", SECRET)},
        ) as response:
            assert response.status == 200, await response.text()
            token = (await response.json())["access_token"]
        for _ in range(3):
            event = {
                "specversion": "1.0",
                "source": SOURCE,
                "type": DEATH,
                "data": {**SAMPLES[DEATH], "entryNumber": str(uuid.uuid4().int % 10**10)},
            }
            async with http.post(
                f"{bus.gateway}/v1/events",
                data=json.dumps(event),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/cloudevents+json",
                    **headers,
                },
            ) as response:
                body = await response.json()
                assert response.status == 202, body  # never refused for its trace context
            if await bus.endpoint.requests_for(body["id"], 45):
                return str(body["id"])
            await bus.apply()
    raise AssertionError("no death reached the endpoint")


@pytest.mark.timeout(300)
async def test_the_endpoint_gets_the_posted_trace_with_the_sinks_own_parent_id(
    kafka: str, registry: str, start_worker: Any, tmp_path: Path
) -> None:
    client = TraceParent.new()
    async with _bus(kafka, registry, start_worker, tmp_path, otlp=None) as bus:
        event_id = await _post_death(
            bus, {"traceparent": client.header(), "tracestate": "congo=t61rcWkgMzE"}
        )
        delivered = await bus.endpoint.request_in(event_id, client.trace_id, 30)
        hop = TraceParent.parse(delivered["traceparent"], delivered.get("tracestate"))
        created = TraceParent.parse(delivered["ce-traceparent"], delivered.get("ce-tracestate"))
        assert hop is not None
        assert created is not None
        assert hop.trace_id == created.trace_id == client.trace_id
        assert hop.state == created.state == "congo=t61rcWkgMzE"
        # three hops: the gateway's (the creation), the worker's, the sink's (the request's)
        assert len({client.span_id, created.span_id, hop.span_id}) == 3
        assert hop.sampled

        # A traceparent the gateway cannot read starts a new trace; the event goes through.
        unreadable = await _post_death(bus, {"traceparent": "00-not-a-trace-01"})
        [*requests] = await bus.endpoint.requests_for(unreadable, 10)
        fresh = [TraceParent.parse(r.get("traceparent")) for r in requests]
        assert any(t is not None and t.trace_id != client.trace_id for t in fresh), requests


@pytest.mark.timeout(300)
async def test_the_three_services_export_their_spans_of_the_trace_over_otlp(
    kafka: str, registry: str, start_worker: Any, tmp_path: Path
) -> None:
    receiver = OtlpReceiver()
    receiver_runner, otlp = await _served(receiver.handle, "/v1/traces")
    client = TraceParent.new()
    trace_id = client.trace_id_hex
    services = {"govesb-gateway", "govesb-worker", "govesb-sink"}
    try:
        async with _bus(kafka, registry, start_worker, tmp_path, otlp=otlp) as bus:
            started = time.monotonic()
            event_id = await _post_death(bus, {"traceparent": client.header()})
            delivered = await bus.endpoint.request_in(event_id, client.trace_id, 30)
            spans = await receiver.spans_of(trace_id, event_id, services, 60)
            waited = time.monotonic() - started
    finally:
        await receiver_runner.cleanup()
    assert {s.service for s in spans if s.event_id == event_id} >= services, (spans, waited)
    # (one a POST: _post_death posts again in the same trace if the first was not delivered)
    [gateway] = [s for s in spans if s.service == "govesb-gateway" and s.event_id == event_id]
    assert gateway.name == f"publish {DEATH}"
    assert gateway.parent_id == f"{client.span_id:016x}"  # the client's span
    workers = [s for s in spans if s.service == "govesb-worker" and s.parent_id == gateway.span_id]
    assert [w.name for w in workers] == ["process esb.ingress.rita"]
    [worker] = workers
    assert worker.event_id == event_id
    sink = [s for s in spans if s.service == "govesb-sink" and s.parent_id == worker.span_id]
    assert len(sink) == 1, spans
    assert sink[0].name.startswith("deliver esb.deliver.tracing-")
    assert sink[0].links == (gateway.span_id,)  # linked to where the event was created
    assert sink[0].event_id == event_id
    # What the endpoint received is the sink's span, in the trace the client started.
    hop = TraceParent.parse(delivered["traceparent"])
    assert hop is not None
    assert f"{hop.span_id:016x}" == sink[0].span_id
    created = TraceParent.parse(delivered["ce-traceparent"])
    assert created is not None
    assert f"{created.span_id:016x}" == gateway.span_id
