"""The audit log: one hash-chained record per event the bus handled, in ``esb.audit``.

Each writer (a worker process) keeps its own chain, identified by ``chain`` and used as the
Kafka key so that a chain's records stay in order in one partition. A record carries its
sequence number and the hash of the previous record of its chain; its own hash covers every
other field. Removing or altering any record breaks the chain at that point, which
``govesb audit verify`` reports. (Removing the newest records of a chain leaves a shorter
valid chain; operators compare chain heads with the worker's last logged hash for that.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import socket
import time as _time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.contract.reasons import MAX_DETAIL

GENESIS = "0" * 64
SUBJECT_KEY_PURPOSE = b"govesb audit subject v1"
"""HKDF ``info`` of the key that hashes business keys in audit records (from the bus key)."""


def subject_digest(key: bytes, subject: str) -> str:
    """HMAC-SHA256 of a business key (a NIN, a TIN): how audit records and the index name it.

    Keyed, not a plain or salted SHA-256: business keys are short and structured (a TIN has
    nine digits), so without a secret anyone holding the audit log could hash every possible
    value and find the person.
    """
    return hmac.new(key, subject.encode("utf-8"), hashlib.sha256).hexdigest()


# One encoder for every record: json.dumps with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(body: dict[str, Any]) -> str:
    """Sorted keys, no spaces, UTF-8 as is: the form a record's hash is computed over."""
    return _CANONICAL.encode(body)


def record_hash(body: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of a record without its ``hash`` field."""
    canonical = canonical_json({k: v for k, v in body.items() if k != "hash"})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def process_instance(name: str) -> str:
    """``name/host/pid``: one running process of the bus (a worker, a sink), for logs and keys."""
    return f"{name}/{socket.gethostname()}/{os.getpid()}"


def new_chain(name: str) -> AuditChain:
    """A new chain for one run of process ``name``: its id names the process and the start."""
    return AuditChain(f"{process_instance(name)}/{int(_time.time() * 1000)}")


@dataclass
class AuditChain:
    """The chain of one writer; ``append`` returns the record to send (key, JSON bytes)."""

    chain: str
    seq: int = 0
    head: str = GENESIS
    _second: int = field(default=-1, init=False, repr=False, compare=False)
    _date_time: str = field(default="", init=False, repr=False, compare=False)

    def _now(self) -> str:
        """``datetime.now(UTC).isoformat(timespec="milliseconds")``, its date and time of day
        formatted once a second (this is on the path of every event and every delivery)."""
        second, milli = divmod(_time.time_ns() // 1_000_000, 1000)
        if second != self._second:
            moment = dt.datetime.fromtimestamp(second, dt.UTC)
            self._second, self._date_time = second, moment.isoformat()[:19]
        return f"{self._date_time}.{milli:03d}+00:00"

    def append(
        self,
        *,
        outcome: str,
        event_id: str | None,
        publisher: str,
        event_type: str | None,
        payload_sha256: str | None,
        subscribers: Iterable[str] = (),
        reason: str | None = None,
        source: tuple[str, int, int] | None = None,
        time: dt.datetime | None = None,
        subscription: str | None = None,
        subject: str | None = None,
        agreements: Iterable[str] = (),
        detail: str | None = None,
    ) -> tuple[bytes, bytes]:
        """Chain one audit record after the current head.

        ``subscription`` names the one agreement a record is about (a failed delivery);
        ``subject`` (a :func:`subject_digest`, never the clear key), ``agreements`` (the
        subscription ids the event was delivered under) and ``detail`` (why it was rejected).
        Each is written only when given, so records without them keep their form.
        """
        body: dict[str, Any] = {
            "chain": self.chain,
            "seq": self.seq,
            "prev": self.head,
            "time": time.isoformat(timespec="milliseconds") if time else self._now(),
            "outcome": outcome,
            "event_id": event_id,
            "publisher": publisher,
            "event_type": event_type,
            "payload_sha256": payload_sha256,
            "subscribers": sorted(subscribers),
            "reason": reason,
            "source": list(source) if source else None,
        }
        if subscription is not None:
            body["subscription"] = subscription
        if subject:
            body["subject"] = subject
        if agreements:
            body["agreements"] = sorted(agreements)
        if detail:
            body["detail"] = detail[:MAX_DETAIL]
        # Serialised once: the record is its canonical form with the hash field appended;
        # verify() parses it, drops "hash" and recomputes over the canonical form.
        canonical = canonical_json(body)
        self.head = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        self.seq += 1
        return self.chain.encode(), f'{canonical[:-1]},"hash":"{self.head}"}}'.encode()


@dataclass
class ChainReport:
    """What verification found for one chain."""

    chain: str
    records: int = 0
    head: str = GENESIS
    breaks: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """No break found."""
        return not self.breaks


def verify(records: Iterable[tuple[int, int, bytes | None]]) -> dict[str, ChainReport]:
    """Check chains in ``(partition, offset, value)`` records, in log order per partition.

    Returns a report per chain; each break says where (partition/offset, seq) and what.
    """
    reports: dict[str, ChainReport] = {}
    undecodable = ChainReport("(unreadable records)")
    for partition, offset, value in records:
        where = f"partition {partition} offset {offset}"
        try:
            body = json.loads(value or b"")
            chain = str(body["chain"])
            seq = int(body["seq"])
        except (ValueError, KeyError, TypeError):
            undecodable.breaks.append(f"{where}: not an audit record")
            continue
        report = reports.setdefault(chain, ChainReport(chain))
        if seq != report.records:
            report.breaks.append(
                f"{where}: seq {seq} follows seq {report.records - 1} "
                f"({'records missing' if seq > report.records else 'records repeated'})"
            )
        elif body.get("prev") != report.head:
            report.breaks.append(f"{where}: seq {seq} does not link to the previous record")
        if record_hash(body) != body.get("hash"):
            report.breaks.append(f"{where}: seq {seq} was altered (hash mismatch)")
        report.records = seq + 1
        report.head = str(body.get("hash"))
    if undecodable.breaks:
        reports[undecodable.chain] = undecodable
    return reports
