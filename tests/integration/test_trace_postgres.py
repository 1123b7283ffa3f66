"""The trace index in a real PostgreSQL server: the same answers as the SQLite file.

The server is ``GOVESB_TEST_POSTGRES`` (a libpq URL) or one started here with the machine's
``initdb``/``pg_ctl`` in a temporary directory (as the ``postgres`` user when run as root);
without either the tests are skipped (PostgreSQL is optional: SQLite is the default index).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from deploy.kafka.launcher import free_port
from streams.settings import KafkaSettings
from streams.trace.index import AuditIndex
from streams.trace.queries import Asker, Refused, trace, track
from streams.trace.store import PostgresStore, SqliteStore, StoreUnavailable, open_store
from tests.unit.test_trace import KEY, NIN, Recorder, fill

pytestmark = [pytest.mark.kafka]


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A libpq URL of a PostgreSQL server (without a database name)."""
    given = os.environ.get("GOVESB_TEST_POSTGRES")
    if given:
        yield given.rstrip("/")
        return
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI") == "true":  # make setup installs it: CI never passes empty
            pytest.fail("CI=true and no PostgreSQL server (initdb/pg_ctl): run make setup")
        pytest.skip("no PostgreSQL server (initdb/pg_ctl) on this machine")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser to start PostgreSQL as postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    directory = Path(tempfile.mkdtemp(prefix="govesb-pg-"))
    if as_user:
        shutil.chown(directory, "postgres")
    data, port = directory / "data", free_port()
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "govesb"],
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w",
         "-t", "60", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"postgresql://govesb@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"trace_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_postgres_gives_the_answers_sqlite_gives(postgres_url: str, tmp_path: Path) -> None:
    postgres, sqlite = PostgresStore(postgres_url), SqliteStore(tmp_path / "index.sqlite")
    for store in (postgres, sqlite):
        delivered, rejected = fill(store)
        fill(store)  # the same records again: nothing changes
    for event_id in (delivered, rejected, "unknown"):
        assert trace(postgres, event_id) == trace(sqlite, event_id)
    assert postgres.positions() == sqlite.positions() == {("esb.audit", 0): 4}
    answers = [
        await track(s, KEY, NIN, Asker(operator="alice"), Recorder()) for s in (postgres, sqlite)
    ]
    assert answers[0] == answers[1]
    assert len(answers[0].disclosures) == 2
    with pytest.raises(Refused):
        await track(postgres, KEY, NIN, Asker(institution="brela"), Recorder())
    assert postgres.prune("2026-12-01T09:00:02.500+00:00") == 3
    postgres.reset()
    assert (postgres.positions(), trace(postgres, delivered)) == ({}, None)
    postgres.close()
    sqlite.close()


async def test_the_audit_log_indexed_in_postgres_holds_every_record_once(
    kafka: str, postgres_url: str, tmp_path: Path
) -> None:
    from streams.audit.verify import read_audit
    from streams.trace.entries import parse_audit

    kafka_settings = KafkaSettings(bootstrap_servers=kafka)
    postgres = open_store(tmp_path / "unused.sqlite", postgres_url)
    index = AuditIndex(postgres, kafka_settings, retention=dt.timedelta(days=30))
    added = await index.catch_up()
    positions = postgres.positions()
    cutoff = index.cutoff()
    expected = [
        entry
        for partition, offset, value in await read_audit(kafka_settings, "esb.audit")
        if offset < positions[("esb.audit", partition)]
        and (entry := parse_audit(value)) is not None
        and entry.time >= cutoff
    ]
    with psycopg.connect(postgres_url) as db:
        stored = db.execute("SELECT count(*) FROM audit_record").fetchone()
    assert stored is not None
    assert added == stored[0] == len({(e.chain, e.seq) for e in expected}) > 0
    assert await index.catch_up() < added  # read again from where it stopped: only what is new
    event_id = next(e.event_id for e in expected if e.outcome == "routed")
    assert event_id is not None
    found = trace(postgres, event_id)
    assert found is not None
    assert found.accepted is True
    postgres.close()


def test_an_unreachable_postgres_is_refused_without_its_password() -> None:
    url = f"postgresql://govesb:s3cret-pw@127.0.0.1:{free_port()}/trace"
    with pytest.raises(StoreUnavailable) as refused:
        open_store(Path("unused.sqlite"), url)
    assert "s3cret-pw" not in str(refused.value)
