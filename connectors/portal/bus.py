"""What the portal reads from the running bus: set-aside records, processes' health and
metrics, the audit chains, the registry changes not yet applied.

Each read is bounded by the caller's timeout; a process or topic that does not answer is
shown as such, never as an error page.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from streams.client.records import BusRecord, read_records
from streams.contract import topics
from streams.registry.model import load_registry
from streams.registry.sync import plan_changes, registry_records
from streams.settings import KafkaSettings

BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}
PROCESS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SetAside:
    """A rejected event or a dead letter, as a page row."""

    time: str
    event_id: str
    event_type: str
    reason: str  # esb_reason of a rejection, esb_status of a dead letter
    detail: str  # esb_detail, or esb_error
    agreement: str
    attempts: str
    partition: int
    offset: int


def set_aside_row(record: BusRecord) -> SetAside:
    """One record of a rejection or DLQ topic as a page row."""
    return SetAside(
        time=record.timestamp.isoformat(timespec="seconds"),
        event_id=record.event_id,
        event_type=record.header("ce_type"),
        reason=record.header("esb_reason") or record.header("esb_status"),
        detail=record.header("esb_detail") or record.header("esb_error"),
        agreement=record.header("esb_subscription"),
        attempts=record.header("esb_attempts"),
        partition=record.partition,
        offset=record.offset,
    )


async def set_aside(kafka: KafkaSettings, topic: str, timeout_s: float) -> list[SetAside]:
    """The records of a rejection or DLQ topic, newest first ([] when the topic is missing)."""
    try:
        records = await asyncio.wait_for(read_records(kafka, topic), timeout_s)
    except LookupError:
        return []
    return sorted((set_aside_row(r) for r in records), key=lambda r: r.time, reverse=True)


async def rejections(kafka: KafkaSettings, institution: str, timeout_s: float) -> list[SetAside]:
    """``esb.rejected.<institution>``."""
    return await set_aside(kafka, topics.rejected(institution), timeout_s)


async def dead_letters(kafka: KafkaSettings, institution: str, timeout_s: float) -> list[SetAside]:
    """``esb.dlq.<institution>``."""
    return await set_aside(kafka, topics.dlq(institution), timeout_s)


@dataclass(frozen=True)
class ProcessState:
    """One process's ``/health`` answer (or why there is none)."""

    name: str
    url: str
    status: str  # ok, degraded, unreachable
    checks: tuple[tuple[str, bool], ...] = ()


@dataclass
class Flow:
    """What the metrics say about one institution."""

    published: float = 0.0
    rejected: float = 0.0
    delivered: float = 0.0
    http_delivered: float = 0.0
    dead_lettered: float = 0.0
    lag: float = 0.0
    breaker: str = ""
    rejected_by_reason: dict[str, float] = field(default_factory=dict)
    attempts_by_status: dict[str, float] = field(default_factory=dict)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str] | None:
    try:
        async with session.get(url) as response:
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return None


async def process_states(
    processes: Mapping[str, str], timeout_s: float
) -> tuple[list[ProcessState], list[str]]:
    """Every configured process's health, and the text of their ``/metrics``."""
    # A page waits for the slowest process: one that does not answer costs a few seconds.
    timeout = aiohttp.ClientTimeout(total=min(timeout_s, PROCESS_TIMEOUT_S))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        names = sorted(processes)
        bases = [processes[n].rstrip("/") for n in names]
        health = await asyncio.gather(*(_get(session, f"{b}/health") for b in bases))
        metrics = await asyncio.gather(*(_get(session, f"{b}/metrics") for b in bases))
    states = [_state(n, b, answer) for n, b, answer in zip(names, bases, health, strict=True)]
    return states, [found[1] for found in metrics if found is not None and found[0] == 200]


def _state(name: str, base: str, answer: tuple[int, str] | None) -> ProcessState:
    if answer is None:
        return ProcessState(name, base, "unreachable")
    status, text = answer
    try:
        body = json.loads(text)
        checks = tuple((str(k), bool(v.get("ok"))) for k, v in (body.get("checks") or {}).items())
        return ProcessState(name, base, str(body.get("status") or status), checks)
    except (ValueError, AttributeError):
        return ProcessState(name, base, "ok" if status == 200 else "degraded")


def flows(metrics_texts: list[str]) -> dict[str, Flow]:
    """Per institution: published, rejected, delivered, lag, breaker state (pure)."""
    found: dict[str, Flow] = defaultdict(Flow)
    for text in metrics_texts:
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        for family in families:
            for sample in family.samples:
                _add(found, sample.name, sample.labels, sample.value)
    return dict(found)


def _add(found: dict[str, Flow], name: str, labels: dict[str, str], value: float) -> None:
    if name == "govesb_pipeline_events_total":
        found[labels.get("publisher", "")].published += value
    elif name == "govesb_pipeline_rejections_total":
        flow = found[labels.get("publisher", "")]
        flow.rejected += value
        reason = labels.get("reason", "")
        flow.rejected_by_reason[reason] = flow.rejected_by_reason.get(reason, 0) + value
    elif name == "govesb_pipeline_deliveries_total":
        found[labels.get("subscriber", "")].delivered += value
    elif name == "govesb_sink_deliveries_total":
        flow = found[labels.get("subscriber", "")]
        if labels.get("outcome") == "delivered":
            flow.http_delivered += value
        else:
            flow.dead_lettered += value
    elif name == "govesb_sink_attempts_total":
        flow = found[labels.get("subscriber", "")]
        status = labels.get("status", "")
        flow.attempts_by_status[status] = flow.attempts_by_status.get(status, 0) + value
    elif name == "govesb_sink_breaker_state":
        found[labels.get("subscriber", "")].breaker = BREAKER_STATES.get(int(value), "?")
    elif name == "govesb_consumer_lag":
        topic = labels.get("topic", "")
        institution = topic.rsplit(".", 1)[-1] if topic.startswith("esb.") else ""
        found[institution].lag += value


def calls_by_api(metrics_texts: list[str]) -> dict[str, dict[str, float]]:
    """Requests and answers per api code and outcome (routed, answered, refused, …) (pure)."""
    found: dict[str, dict[str, float]] = defaultdict(dict)
    for text in metrics_texts:
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        for family in families:
            for sample in family.samples:
                if sample.name == "govesb_pipeline_calls_total":
                    outcomes = found[sample.labels.get("api", "")]
                    outcome = sample.labels.get("outcome", "")
                    outcomes[outcome] = outcomes.get(outcome, 0) + sample.value
    return dict(found)


def pending_changes(registry_file: Path | None, current: Mapping[str, bytes]) -> list[str]:
    """What ``registry apply`` of ``registry_file`` would change (``+``/``~``/``-`` key), or
    the file's problems when it does not lint."""
    if registry_file is None:
        return []
    registry, problems = load_registry(registry_file)
    if registry is None:
        return [f"! {problem}" for problem in problems]
    changes = plan_changes(registry_records(registry), dict(current))
    return sorted(
        f"{'-' if value is None else '~' if key in current else '+'} {key}"
        for key, value in changes.items()
    )


def audit_status(reports: Mapping[str, Any]) -> list[tuple[str, int, str, list[str]]]:
    """Audit chains as (chain, records, head, breaks), broken ones first."""
    rows = [(r.chain, r.records, r.head[:16], list(r.breaks)) for r in reports.values()]
    return sorted(rows, key=lambda row: (not row[3], row[0]))
