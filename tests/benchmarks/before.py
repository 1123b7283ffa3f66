"""``make bench ARGS="--before REV"``: every figure of this code and of ``REV``'s, side by side.

``REV``'s ``streams``, ``connectors`` and ``schemas`` are extracted (``git archive``) into a
scratch directory, beside a link to this checkout's ``tests`` and a copy of its ``deploy``
(with ``REV``'s example registry, the one its code reads), which drive both.
Each repetition runs the chosen benchmarks once for each side, one after the other against
the same broker and registry, alternating which side goes first, so drift on a busy machine
hits both alike. A side runs as ``python -m tests.benchmarks --once``; the older side from
the scratch directory, with ``PYTHONPATH`` naming it, so every ``govesb`` process it starts
imports the older code.

A benchmark the older code cannot run (a figure or feature it lacks) shows ``n/a`` there. Each
side's own tables go to ``.cache/bench/before.log`` and ``after.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from streams.settings import REPO_ROOT
from tests.benchmarks.common import LOGS

EXTRACTED = ("streams", "connectors", "schemas")
DRIVING = ("tests", ".cache")  # this checkout's, beside the older code
EXAMPLE_REGISTRY = "deploy/registry.example.yaml"


def extract(rev: str, into: Path) -> str:
    """``rev``'s shipped code under ``into``; the commit it names."""
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if commit.returncode != 0:
        raise SystemExit(f"error: --before {rev}: not a commit of this repository")
    archive = subprocess.Popen(
        ["git", "-C", str(REPO_ROOT), "archive", commit.stdout.strip(), *EXTRACTED],
        stdout=subprocess.PIPE,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"error: git archive {rev} failed")
    for shared in DRIVING:
        (into / shared).symlink_to(REPO_ROOT / shared)
    # deploy/ is copied, not linked (its modules find the tree from their own path), with
    # REV's example registry: the one its code reads
    shutil.copytree(REPO_ROOT / "deploy", into / "deploy",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    registry = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "show", f"{commit.stdout.strip()}:{EXAMPLE_REGISTRY}"],
        capture_output=True, check=False,
    )  # fmt: skip
    if registry.returncode == 0:
        (into / EXAMPLE_REGISTRY).write_bytes(registry.stdout)
    return commit.stdout.strip()[:12]


def run_side(names: list[str], bus_env: dict[str, str], older: Path | None) -> dict[str, Any]:
    """One repetition of ``names`` on one side (``older``: the extracted tree, run from there
    and first on every process's path); its JSON report (a failed side: errors)."""
    env = {**os.environ, **bus_env}
    env.pop("PYTHONPATH", None)
    if older is not None:
        env["PYTHONPATH"] = str(older)
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{'before' if older else 'after'}.log"
    with tempfile.NamedTemporaryFile(suffix=".json") as out, log_path.open("ab") as log:
        done = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks", "--once", "--only", ",".join(names),
             "--json-out", out.name],
            env=env, cwd=older or REPO_ROOT, stdout=log, check=False,
        )  # fmt: skip
        text = Path(out.name).read_text()
    if not text:
        return {name: {"error": f"exit {done.returncode}"} for name in names}
    report: dict[str, Any] = json.loads(text)
    ran = Path(report.get("code", "")).resolve()
    if ran != (older or REPO_ROOT).resolve():  # the side must run the code it names
        raise SystemExit(f"error: the benchmark side meant for {older or REPO_ROOT} ran {ran}")
    return report


def figures(section: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """The figures of one section of one run: key -> (value, unit)."""
    return {
        key: (value["median"], value.get("unit", ""))
        for key, value in section.items()
        if isinstance(value, dict) and "median" in value
    }


def compare(
    names: list[str], runs: list[tuple[dict[str, Any], dict[str, Any]]], before: str
) -> dict[str, Any]:
    """Print before | after | after/before per figure; the JSON-ready comparison."""
    result: dict[str, Any] = {"before": before}
    for name in names:
        samples: dict[str, dict[str, list[float]]] = {}
        units: dict[str, str] = {}
        errors: dict[str, str] = {}
        for pair in runs:
            for side, report in zip(("before", "after"), pair, strict=True):
                section = report.get(name, {})
                if "error" in section:
                    errors[side] = section["error"]
                for key, (value, unit) in figures(section).items():
                    samples.setdefault(key, {}).setdefault(side, []).append(value)
                    units[key] = unit
        print(f"\n{name}: before ({before}) | after | after/before")
        for side, error in errors.items():
            print(f"  ({side} failed: {error})")
        table: dict[str, Any] = {}
        width = max([len(key) for key in samples] + [10])
        for key, sides in samples.items():
            old = statistics.median(sides["before"]) if "before" in sides else None
            new = statistics.median(sides["after"]) if "after" in sides else None
            change = new / old if old and new is not None else None
            print(f"  {key:<{width}}  {_text(old):>12}  {_text(new):>12}  "
                  f"{_text(change, 'x'):>9}  {units[key]}")  # fmt: skip
            table[key] = {"before": old, "after": new, "change": change, "unit": units[key]}
        result[name] = table
    return result


def _text(value: float | None, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}{suffix}" if abs(value) >= 100 else f"{value:.3g}{suffix}"


def main(names: list[str], repeat: int, rev: str, bus_env: dict[str, str]) -> dict[str, Any]:
    """``repeat`` repetitions of ``names`` on each side, alternating; the comparison."""
    with tempfile.TemporaryDirectory(prefix="govesb-before-") as scratch:
        base = Path(scratch)
        commit = extract(rev, base)
        runs = []
        for repetition in range(repeat):
            first_old = repetition % 2 == 0
            first = "before" if first_old else "after"
            print(f"[before/after] repetition {repetition + 1}/{repeat}: {first} first",
                  file=sys.stderr, flush=True)  # fmt: skip
            if first_old:
                old = run_side(names, bus_env, base)
                new = run_side(names, bus_env, None)
            else:
                new = run_side(names, bus_env, None)
                old = run_side(names, bus_env, base)
            runs.append((old, new))
    return compare(names, runs, commit)
