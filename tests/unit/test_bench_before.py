"""The before/after table of ``make bench ARGS="--before REV"`` (tests/benchmarks/before.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchmarks.before import compare


def _run(**figures: float) -> dict[str, Any]:
    return {"pipeline": {k: {"median": v, "unit": "x"} for k, v in figures.items()} | {"n": 3}}


def test_each_figure_has_the_median_of_each_side_and_their_quotient(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = [
        (_run(same_work_ratio=0.40), _run(same_work_ratio=0.80)),
        (_run(same_work_ratio=0.50), _run(same_work_ratio=0.90)),
        (_run(same_work_ratio=0.30), _run(same_work_ratio=0.70)),
    ]
    table = compare(["pipeline"], runs, "79bc962")
    assert table["before"] == "79bc962"
    figure = table["pipeline"]["same_work_ratio"]
    assert figure["before"] == pytest.approx(0.40)
    assert figure["after"] == pytest.approx(0.80)
    assert figure["change"] == pytest.approx(2.0)
    assert "same_work_ratio" in capsys.readouterr().out


def test_a_figure_or_a_benchmark_the_older_code_lacks_is_not_available(
    capsys: pytest.CaptureFixture[str],
) -> None:
    older = {"pipeline": {"error": "ImportError: no module named supervisor"}}
    table = compare(["pipeline"], [(older, _run(processes_ratio=1.7))], "79bc962")
    assert table["pipeline"]["processes_ratio"] == {
        "before": None, "after": pytest.approx(1.7), "change": None, "unit": "x"
    }  # fmt: skip
    out = capsys.readouterr().out
    assert "before failed: ImportError" in out
    assert "n/a" in out
