"""``make demo`` as a user runs it: it ends with everything delivered and nothing lost."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from deploy.kafka.launcher import REPO, die_with_parent

pytestmark = [pytest.mark.kafka, pytest.mark.registry, pytest.mark.slow]


def test_the_demo_delivers_everything_rejects_what_it_should_and_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=die_with_parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.search(
        r"delivered: (\d+)/(\d+), rejected: (\d+) \(expected (\d+)\), lost: (\d+)", result.stdout
    )
    assert summary is not None, result.stdout[-2000:]
    delivered, expected, rejected, expected_rejected, lost = map(int, summary.groups())
    assert delivered == expected > 0
    assert rejected == expected_rejected > 0
    assert lost == 0
    assert "intact" in result.stdout
    for reason in ("bad-signature", "unknown-key", "duplicate", "wire-format", "source-mismatch"):
        assert reason in result.stdout
    # The legacy flow: GovESB pushes through the gateway reach the legacy payroll endpoint.
    assert "legacy: pushed 3, delivered to the payroll endpoint 3" in result.stdout
    assert "INVALID" not in result.stdout
