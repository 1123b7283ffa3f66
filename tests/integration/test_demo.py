"""``make demo`` (``make demo``) as a user runs it: everything delivered, nothing lost, every
Prometheus target up; with ``--keep-running`` Ctrl-C stops what it started and nothing else."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.dev_stream import INVALID_KINDS
from deploy.kafka.launcher import REPO, die_with_parent

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (the JVMs, govesb processes and Prometheus it started)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found |= {int(child) for child in children}
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def test_dev_delivers_everything_loses_nothing_and_ctrl_c_stops_only_what_it_started(
    tmp_path: Path,
) -> None:
    bystander = subprocess.Popen(["sleep", "300"], preexec_fn=die_with_parent)
    output = tmp_path / "dev.out"
    with output.open("w") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "deploy.dev", "--events", "90",
             "--invalid", "10", "--keep-running"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "COLUMNS": "160"}, preexec_fn=die_with_parent,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops everything" not in output.read_text():
            assert dev.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(1)
        text = output.read_text()
        summary = re.findall(
            r"delivered: (\d+)/(\d+), rejected: (\d+) \(expected (\d+)\), lost: (\d+)", text
        )
        assert len(summary) == 1, text[-3000:]
        delivered, expected, rejected, expected_rejected, lost = map(int, summary[0])
        assert delivered == expected > 0
        assert rejected == expected_rejected == 10
        assert lost == 0
        assert "intact" in text
        assert "Prometheus targets: all up" in text
        for reason in INVALID_KINDS:  # each kind of invalid event, rejected with its reason
            assert re.search(rf"│ {reason} +│ 2 +│ 2 +│", text), reason
        assert "legacy: pushed 3, delivered to the payroll endpoint 3" in text
        calls = re.findall(
            r"requests: answered (\d+)/(\d+), refused (\d+) \(expected (\d+)\), timed out (\d+)",
            text,
        )
        assert len(calls) == 1, text[-3000:]
        answered, asked, refused, expected_refused, timed_out = map(int, calls[0])
        # tra's two VERIFY_NIN over HTTP, moh's two over Kafka, brela's TIN_STATUS.
        assert answered == asked == 5
        assert "not sent" not in text
        assert refused == expected_refused == 3  # no-grant, schema-mismatch, unknown-api
        assert timed_out == 0
        lines = text.splitlines()
        last = next(n for n, line in enumerate(lines) if line.startswith("delivered: "))
        assert lines[last - 1].startswith("requests: answered")  # just before the last line
        assert "INVALID" not in text
        for service in ("Kafka bootstrap", "Prometheus", "gateway", "legacy payroll endpoint"):
            assert service in text
        portal = re.search(r"portal ready at (http://127\.0\.0\.1:\d+/)", text)
        assert portal is not None, text[-3000:]
        assert "sign in as institution rita / demo-rita-client-secret" in text
        with urllib.request.urlopen(portal.group(1) + "signin", timeout=10) as page:
            assert "Sign in" in page.read().decode()

        started = _children(dev.pid)
        # broker, registry, worker, sink, gateway, Prometheus, portal
        assert len(started) >= 7, started
        dev.send_signal(signal.SIGINT)
        assert dev.wait(90) == 130
        time.sleep(0.5)
        assert [pid for pid in started if _alive(pid)] == []
        assert bystander.poll() is None, "the demo stopped a process it did not start"
        assert "everything the demo started is down" in output.read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
        bystander.kill()
