"""Where the trace index keeps its rows: a small interface, SQLite (stdlib, WAL, one file) by
default and PostgreSQL (psycopg) through one setting.

Every write is idempotent: an audit record is identified by its chain and sequence number,
an agreement version by its id, the time it was written and the digest of its registry record
(a change undone is a version again), so reading the same topic records again changes
nothing. The read positions are stored in the same transaction as the rows they produced.
The SQL is portable (``INSERT … ON CONFLICT``, no engine-specific types): both stores run the
same statements, only the connection and the parameter marks differ.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from streams.trace.entries import Agreement, AuditEntry

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_record (
        chain TEXT NOT NULL, seq BIGINT NOT NULL, time TEXT NOT NULL, outcome TEXT NOT NULL,
        event_id TEXT, publisher TEXT, event_type TEXT, subscribers TEXT NOT NULL,
        agreements TEXT NOT NULL, reason TEXT, detail TEXT, subject TEXT, source TEXT,
        PRIMARY KEY (chain, seq))""",
    "CREATE INDEX IF NOT EXISTS audit_record_event ON audit_record (event_id)",
    "CREATE INDEX IF NOT EXISTS audit_record_subject ON audit_record (subject)",
    "CREATE INDEX IF NOT EXISTS audit_record_time ON audit_record (time)",
    """CREATE TABLE IF NOT EXISTS agreement_version (
        id TEXT NOT NULL, digest TEXT NOT NULL, valid_from TEXT NOT NULL, subscriber TEXT NOT NULL,
        event_types TEXT NOT NULL, fields TEXT NOT NULL, mask TEXT NOT NULL, purpose TEXT NOT NULL,
        delivery TEXT NOT NULL, PRIMARY KEY (id, valid_from, digest))""",
    """CREATE TABLE IF NOT EXISTS event_type_owner (
        event_type TEXT PRIMARY KEY, owner TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS read_position (
        topic TEXT NOT NULL, partition_id INTEGER NOT NULL, next_offset BIGINT NOT NULL,
        PRIMARY KEY (topic, partition_id))""",
)
_COLUMNS = (
    "chain, seq, time, outcome, event_id, publisher, event_type, subscribers, agreements, "
    "reason, detail, subject, source"
)
_SEP = ","  # lists are stored joined: ids and field names never contain a comma


@dataclass
class Batch:
    """What one read of the topics adds, written in one transaction."""

    entries: list[AuditEntry] = field(default_factory=list)
    agreements: list[tuple[str, Agreement]] = field(default_factory=list)  # (digest, agreement)
    owners: dict[str, str] = field(default_factory=dict)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)


class TraceStore(Protocol):
    """The index's storage (SQLite or PostgreSQL behind the same methods)."""

    def write(self, batch: Batch, *, not_before: str) -> int:
        """Add a batch (entries older than ``not_before`` are skipped); return rows added."""
        ...

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read per (topic, partition)."""
        ...

    def prune(self, before: str) -> int:
        """Delete audit rows older than ``before``; return how many."""
        ...

    def by_event(self, event_id: str) -> list[AuditEntry]:
        """Every row of one event, oldest first."""
        ...

    def by_subject(self, subject: str) -> list[AuditEntry]:
        """Every row whose subject hash is ``subject``, oldest first."""
        ...

    def agreement_versions(self, ids: Iterable[str]) -> list[Agreement]:
        """Every known version of these agreements, oldest first."""
        ...

    def owners(self) -> dict[str, str]:
        """The owner institution of each event type."""
        ...

    def reset(self) -> None:
        """Delete every row (``govesb index rebuild``)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def _join(values: Sequence[str]) -> str:
    return _SEP.join(values)


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split(_SEP)) if text else ()


def _entry(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        chain=row["chain"],
        seq=row["seq"],
        time=row["time"],
        outcome=row["outcome"],
        event_id=row["event_id"],
        publisher=row["publisher"],
        event_type=row["event_type"],
        subscribers=_split(row["subscribers"]),
        agreements=_split(row["agreements"]),
        reason=row["reason"],
        detail=row["detail"],
        subject=row["subject"],
        source=row["source"],
    )


class StoreUnavailable(RuntimeError):
    """The database cannot be opened; the message says which and why (never a password)."""


class SqlStore:
    """The queries, shared by the SQLite and PostgreSQL stores (``?`` marks parameters)."""

    placeholder = "?"
    begin = "BEGIN"

    def __init__(self, connection: Any) -> None:
        self._db = connection
        for statement in SCHEMA:
            self._execute(statement)

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _execute(self, statement: str, parameters: Sequence[Any] = ()) -> Any:
        return self._db.execute(self._sql(statement), parameters)

    def _execute_many(self, statement: str, rows: list[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        cursor = self._db.cursor()
        try:
            cursor.executemany(self._sql(statement), rows)
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def write(self, batch: Batch, *, not_before: str) -> int:
        """See :meth:`TraceStore.write`."""
        self._execute(self.begin)
        try:
            added = self._execute_many(
                f"INSERT INTO audit_record ({_COLUMNS}) VALUES "  # noqa: S608 - constant
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (
                        e.chain, e.seq, e.time, e.outcome, e.event_id, e.publisher,
                        e.event_type, _join(e.subscribers), _join(e.agreements), e.reason,
                        e.detail, e.subject, e.source,
                    )
                    for e in batch.entries
                    if e.time >= not_before
                ],
            )  # fmt: skip
            self._execute_many(
                "INSERT INTO agreement_version (id, digest, valid_from, subscriber, "
                "event_types, fields, mask, purpose, delivery) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (
                        a.id, digest, a.valid_from, a.subscriber, _join(a.event_types),
                        _join(a.fields), _join(a.mask), a.purpose, a.delivery,
                    )
                    for digest, a in batch.agreements
                ],
            )  # fmt: skip
            self._execute_many(
                "INSERT INTO event_type_owner (event_type, owner) VALUES (?, ?) "
                "ON CONFLICT (event_type) DO UPDATE SET owner = excluded.owner",
                list(batch.owners.items()),
            )
            self._execute_many(
                "INSERT INTO read_position (topic, partition_id, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition_id) DO UPDATE SET next_offset = "
                "excluded.next_offset",
                [
                    (topic, partition, offset)
                    for (topic, partition), offset in batch.positions.items()
                ],
            )
            self._execute("COMMIT")
        except BaseException:
            self._execute("ROLLBACK")
            raise
        return added

    def positions(self) -> dict[tuple[str, int], int]:
        """See :meth:`TraceStore.positions`."""
        rows = self._execute("SELECT topic, partition_id, next_offset FROM read_position")
        return {(r["topic"], r["partition_id"]): r["next_offset"] for r in rows}

    def prune(self, before: str) -> int:
        """See :meth:`TraceStore.prune`."""
        return int(self._execute("DELETE FROM audit_record WHERE time < ?", (before,)).rowcount)

    def by_event(self, event_id: str) -> list[AuditEntry]:
        """See :meth:`TraceStore.by_event`."""
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM audit_record WHERE event_id = ? "  # noqa: S608 - constant
            "ORDER BY time, chain, seq",
            (event_id,),
        )
        return [_entry(r) for r in rows]

    def by_subject(self, subject: str) -> list[AuditEntry]:
        """See :meth:`TraceStore.by_subject`."""
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM audit_record WHERE subject = ? "  # noqa: S608 - constant
            "ORDER BY time, chain, seq",
            (subject,),
        )
        return [_entry(r) for r in rows]

    def agreement_versions(self, ids: Iterable[str]) -> list[Agreement]:
        """See :meth:`TraceStore.agreement_versions`."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        marks = ", ".join("?" for _ in wanted)
        rows = self._execute(
            "SELECT id, valid_from, subscriber, event_types, fields, mask, purpose, delivery "  # noqa: S608 - placeholders only
            f"FROM agreement_version WHERE id IN ({marks}) ORDER BY id, valid_from",
            wanted,
        )
        return [
            Agreement(
                id=r["id"],
                subscriber=r["subscriber"],
                event_types=_split(r["event_types"]),
                fields=_split(r["fields"]),
                mask=_split(r["mask"]),
                purpose=r["purpose"],
                delivery=r["delivery"],
                valid_from=r["valid_from"],
            )
            for r in rows
        ]

    def owners(self) -> dict[str, str]:
        """See :meth:`TraceStore.owners`."""
        rows = self._execute("SELECT event_type, owner FROM event_type_owner")
        return {r["event_type"]: r["owner"] for r in rows}

    def reset(self) -> None:
        """See :meth:`TraceStore.reset`."""
        self._execute(self.begin)
        for table in ("audit_record", "agreement_version", "event_type_owner", "read_position"):
            self._execute(f"DELETE FROM {table}")  # noqa: S608 - constant table names
        self._execute("COMMIT")

    def close(self) -> None:
        """See :meth:`TraceStore.close`."""
        self._db.close()


class SqliteStore(SqlStore):
    """The index in one SQLite file (WAL: the CLI reads while a follower writes)."""

    begin = "BEGIN IMMEDIATE"  # take the write lock first: no deadlock between two writers

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            db = sqlite3.connect(path, timeout=30, isolation_level=None)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot open the index {path}: {error}") from None
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        super().__init__(db)


class PostgresStore(SqlStore):
    """The index in a PostgreSQL database (psycopg 3; the same tables and queries)."""

    placeholder = "%s"

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.rows import dict_row

        try:
            db = psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10)
        except psycopg.Error as error:
            # psycopg's message names the host and the failure, never the password.
            raise StoreUnavailable(f"cannot open the PostgreSQL index: {error}") from None
        super().__init__(db)


def open_store(database: Path, database_url: str | None = None) -> TraceStore:
    """PostgreSQL when a URL is given, else the SQLite file.

    Raises:
        StoreUnavailable: the database cannot be opened.
    """
    if database_url:
        return PostgresStore(database_url)
    return SqliteStore(database)
