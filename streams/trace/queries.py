"""Questions the trace index answers: "where is my event?" and "who received data about X?".

Plain functions over a :class:`~streams.trace.store.TraceStore`, returning frozen dataclasses
(the CLI prints them, the portal will serve them). :func:`trace` follows one event id through
the worker and the HTTP sinks; :func:`track` lists, for one business key, the agreements that
delivered data about it, and only to an operator or to the institution that owns the data —
every lookup, allowed or refused, is recorded before anything is answered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from streams.audit.chain import subject_digest
from streams.contract import topics
from streams.contract.requests import answer_id
from streams.trace.entries import (
    CALL_OUTCOMES,
    SINK_OUTCOMES,
    WORKER_OUTCOMES,
    Agreement,
    AuditEntry,
    parse_receipt,
)
from streams.trace.store import TraceStore


@dataclass(frozen=True)
class Step:
    """One thing that happened to an event, when, and which process said so (``by``)."""

    time: str
    what: str  # received accepted rejected routed attempt delivered dead-lettered replayed
    by: str
    subscriber: str | None = None
    agreement: str | None = None
    status: int | None = None
    attempt: int | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Delivery:
    """An agreement the event was delivered under, and the topic it went to."""

    subscriber: str
    agreement: str | None
    topic: str


@dataclass(frozen=True)
class Trace:
    """Everything the audit log says about one event id, oldest first."""

    event_id: str
    event_type: str | None
    publisher: str | None
    received_at: str | None
    accepted: bool | None  # None: the worker's record is not (yet) in the index
    reason: str | None
    detail: str | None
    deliveries: tuple[Delivery, ...]
    steps: tuple[Step, ...]


def _subscriber_of(agreements: list[Agreement]) -> dict[str, str]:
    return {a.id: a.subscriber for a in agreements}


def _deliveries(entry: AuditEntry, subscribers: dict[str, str]) -> list[Delivery]:
    found = [
        Delivery(subscribers.get(a, ""), a, topics.deliver(subscribers.get(a, "?")))
        for a in entry.agreements
    ]
    if not found:  # a record from before agreements were audited: subscribers only
        found = [Delivery(s, None, topics.deliver(s)) for s in entry.subscribers]
    elif len(entry.subscribers) == 1:  # an agreement no longer in the registry
        found = [
            d if d.subscriber else Delivery(entry.subscribers[0], d.agreement,
                                            topics.deliver(entry.subscribers[0]))
            for d in found
        ]  # fmt: skip
    return found


def _steps(entry: AuditEntry, deliveries: list[Delivery]) -> list[Step]:
    grant = entry.agreements[0] if entry.agreements else None  # a call's one grant
    if entry.outcome == "requested":  # a request: checked, then routed to its provider
        provider = entry.subscribers[0] if entry.subscribers else None
        return [
            Step(entry.time, "received", entry.chain, detail=entry.source),
            Step(entry.time, "accepted", entry.chain),
            Step(entry.time, "requested", entry.chain, provider, grant,
                 detail=f"{topics.request(provider or '?')} ({entry.detail})"),
        ]  # fmt: skip
    if entry.outcome in ("answered", "answer-failed"):  # the answer, passed on to the requester
        requester = entry.subscribers[0] if entry.subscribers else None
        return [
            Step(entry.time, entry.outcome, entry.chain, requester, grant,
                 reason=entry.reason, detail=entry.detail)
        ]  # fmt: skip
    if entry.outcome in WORKER_OUTCOMES:
        steps = [Step(entry.time, "received", entry.chain, detail=entry.source)]
        if entry.outcome == "rejected":
            return [*steps, Step(entry.time, "rejected", entry.chain, reason=entry.reason,
                                 detail=entry.detail)]  # fmt: skip
        steps.append(Step(entry.time, "accepted", entry.chain))
        return steps + [
            Step(entry.time, "routed", entry.chain, d.subscriber, d.agreement, detail=d.topic)
            for d in deliveries
        ]
    subscriber = entry.subscribers[0] if entry.subscribers else None
    if entry.outcome == "replayed":
        return [Step(entry.time, "replayed", entry.chain, subscriber, detail=entry.reason)]
    receipt = parse_receipt(entry.reason)
    what = "attempt" if entry.outcome == "retrying" else entry.outcome
    detail = topics.dlq(subscriber or "?") if entry.outcome == "dead-lettered" else None
    return [
        Step(entry.time, what, entry.chain, subscriber, status=receipt.status,
             attempt=receipt.attempts, reason=entry.reason, detail=detail)
    ]  # fmt: skip


def trace(store: TraceStore, event_id: str) -> Trace | None:
    """The timeline of one event (or request: its answer included), or None when the index
    knows nothing of it."""
    known = WORKER_OUTCOMES | SINK_OUTCOMES | CALL_OUTCOMES
    entries = [e for e in store.by_event(event_id) if e.outcome in known]
    if any(e.outcome == "requested" for e in entries):
        answers = store.by_event(answer_id(event_id))
        entries += [e for e in answers if e.outcome in known]
    if not entries:
        return None
    subscribers = _subscriber_of(store.agreement_versions(a for e in entries for a in e.agreements))
    first = next((e for e in entries if e.outcome in WORKER_OUTCOMES | {"requested"}), None)
    # The first record of a worker decides acceptance (a later copy of the event is a
    # duplicate it refused); deliveries are those of every record that routed it (after a
    # worker restart, an event read again is routed again by another chain).
    steps: list[Step] = []
    deliveries: dict[tuple[str, str | None], Delivery] = {}
    for entry in entries:
        routed = _deliveries(entry, subscribers) if entry.outcome == "routed" else []
        deliveries.update({(d.subscriber, d.agreement): d for d in routed})
        steps += _steps(entry, routed)
    named = {subscriber for subscriber, agreement in deliveries if agreement}
    kept = tuple(d for (s, a), d in deliveries.items() if a or s not in named)
    return Trace(
        event_id=event_id,
        event_type=next((e.event_type for e in entries if e.event_type), None),
        publisher=next((e.publisher for e in entries if e.publisher), None),
        received_at=first.time if first else None,
        accepted=None if first is None else first.outcome != "rejected",
        reason=first.reason if first and first.outcome == "rejected" else None,
        detail=next((e.detail for e in entries if e.outcome == "rejected" and e.detail), None)
        if first and first.outcome == "rejected"
        else None,
        deliveries=tuple(sorted(kept, key=lambda d: (d.subscriber, d.agreement or ""))),
        steps=tuple(steps),
    )


# --------------------------------------------------------------------------- data tracker


@dataclass(frozen=True)
class Asker:
    """Who asks the data tracker: an operator of the bus, or an institution."""

    operator: str | None = None
    institution: str | None = None

    def __post_init__(self) -> None:
        if (self.operator is None) == (self.institution is None):
            raise ValueError("an asker is either an operator or an institution")

    @property
    def label(self) -> str:
        """``operator:<name>`` or ``institution:<id>``, as the lookup's audit record names it."""
        return f"operator:{self.operator}" if self.operator else f"institution:{self.institution}"


@dataclass(frozen=True)
class Disclosure:
    """Data about the business key one agreement delivered: what, when, to whom, why."""

    event_id: str
    event_type: str
    owner: str
    time: str  # when the worker delivered it to the agreement's topic
    subscriber: str
    agreement: str
    fields: tuple[str, ...]
    masked: tuple[str, ...]
    purpose: str
    delivery: str  # kafka or http
    received_at: str | None = None  # the HTTP endpoint's 2xx, for HTTP agreements
    status: int | None = None


@dataclass(frozen=True)
class Tracking:
    """The answer to one allowed lookup."""

    asker: str
    subject: str  # the keyed hash looked up (the clear key is never kept)
    disclosures: tuple[Disclosure, ...]


class Refused(PermissionError):
    """The asker may not see what the bus delivered about this key (the refusal is audited)."""


class LookupRecorder(Protocol):
    """Writes the record of a lookup; it must be stored before the lookup is answered."""

    async def record(self, asker: str, subject: str, allowed: bool, found: int) -> None:
        """Record one lookup: who, which key (hashed), allowed or not, how many results."""
        ...


def _version_at(versions: list[Agreement], time: str) -> Agreement | None:
    """The agreement as it was at ``time`` (the oldest version known when none was before)."""
    before = [v for v in versions if v.valid_from <= time]
    if before:
        return before[-1]
    return versions[0] if versions else None


def _disclosures(
    store: TraceStore, entries: Iterable[AuditEntry], owners: dict[str, str]
) -> list[Disclosure]:
    # Deliveries under agreements, and answers under grants (what a requester was told).
    routed = [e for e in entries if e.outcome in ("routed", "answered") and e.event_id]
    versions: dict[str, list[Agreement]] = {}
    for version in store.agreement_versions(a for e in routed for a in e.agreements):
        versions.setdefault(version.id, []).append(version)
    found: list[Disclosure] = []
    for entry in routed:
        receipts = [r for r in store.by_event(entry.event_id or "") if r.outcome == "delivered"]
        for agreement_id in entry.agreements:
            agreement = _version_at(versions.get(agreement_id, []), entry.time)
            subscriber = agreement.subscriber if agreement else ""
            receipt = next((r for r in receipts if subscriber in r.subscribers), None)
            found.append(
                Disclosure(
                    event_id=entry.event_id or "",
                    event_type=entry.event_type or "",
                    owner=owners.get(entry.event_type or "", ""),
                    time=entry.time,
                    subscriber=subscriber,
                    agreement=agreement_id,
                    fields=agreement.fields if agreement else (),
                    masked=agreement.mask if agreement else (),
                    purpose=agreement.purpose if agreement else "",
                    delivery=agreement.delivery if agreement else "",
                    received_at=receipt.time if receipt else None,
                    status=parse_receipt(receipt.reason).status if receipt else None,
                )
            )
    return found


async def track(
    store: TraceStore,
    subject_key: bytes,
    business_key: str,
    asker: Asker,
    recorder: LookupRecorder,
) -> Tracking:
    """Which agreements delivered data about ``business_key``, for ``asker``.

    An operator sees every event type; an institution only the event types it owns, and is
    refused when it owns none of those the key appears in (so a refusal says nothing about
    whether the key is known). The lookup is recorded first; if that fails, nothing is told.

    Raises:
        Refused: the asker is neither an operator nor the owner of this data.
    """
    subject = subject_digest(subject_key, business_key)
    owners = store.owners()
    entries = store.by_subject(subject)
    if asker.institution is not None:
        entries = [e for e in entries if owners.get(e.event_type or "") == asker.institution]
    disclosures = _disclosures(store, entries, owners)
    allowed = asker.operator is not None or bool(entries)
    await recorder.record(asker.label, subject, allowed, len(disclosures) if allowed else 0)
    if not allowed:
        raise Refused(f"{asker.label} may not see deliveries of this key: operators and the "
                      "institution that owns the event type only")  # fmt: skip
    return Tracking(asker.label, subject, tuple(disclosures))
