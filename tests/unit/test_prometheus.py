"""deploy/prometheus: promtool accepts the config and rules, the rule tests pass and can fail,
every rule reads a metric the processes export, and the README's table lists them all.

promtool comes from Debian's ``prometheus`` package (``make setup`` installs it). Without it
these tests skip locally, but fail when ``CI=true``: CI never passes empty.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from streams.settings import REPO_ROOT
from tests.exported_metrics import exported_metrics, series_names

if TYPE_CHECKING:
    from tests.conftest import TestEnvironment

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "tests" / "alerts_test.yml"
README = PROMETHEUS / "README.md"

EXPECTED_ALERTS = {
    "GovesbWorkerDown",
    "GovesbConsumerLagGrowing",
    "GovesbRejectionSpike",
    "GovesbAgreementFailing",
    "GovesbDlqGrowing",
    "GovesbBreakerOpen",
    "GovesbGateway5xx",
    "GovesbDeliveryLatencyHigh",
    "GovesbWorkerOutputStuck",
    "GovesbWorkerPartitionHalted",
    "GovesbWorkerAckerDown",
    "GovesbUndeliverable",
}


@pytest.fixture(scope="session")
def promtool(test_environment: TestEnvironment) -> str:
    """Path of ``promtool``."""
    found = shutil.which("promtool")
    if found is None:
        why = "promtool is not installed (`make setup` installs Debian's prometheus package)"
        if test_environment.ci:
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    return found


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool from the repository root; its output is in ``stdout`` (stderr merged)."""
    return subprocess.run(
        [promtool, *map(str, args)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )


def load(path: Path) -> Any:
    """A YAML file's content."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    """Every recording and alerting rule of alerts.yml."""
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    """Alerting rules by name."""
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# An identifier that is neither part of a number/duration nor a function call.
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric (and recorded series) names a PromQL expression reads."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job=~"govesb-.*"} == 0', {"up"}),
        (
            'sum by (job) (rate(a_total{route!~"/metrics|/health", status=~"5.."}[5m]))',
            {"a_total"},
        ),
        ("x:y:rate5m > 0.2 and on (publisher) z > 1e3", {"x:y:rate5m", "z"}),
        ("(c unless c offset 10m) or increase(c[10m])", {"c"}),
        ("histogram_quantile(0.99, sum(rate(h_bucket[5m])) by (le))", {"h_bucket"}),
        ("deriv(group:lag:sum[10m:1m]) > 0", {"group:lag:sum"}),
    ],
)
def test_metric_names_are_read_from_promql_without_functions_labels_or_keywords(
    expr: str, names: set[str]
) -> None:
    assert metric_names(expr) == names


def test_scrape_config_is_valid_and_scrapes_each_process_every_5s(promtool: str) -> None:
    checked = run_promtool(promtool, "check", "config", CONFIG)
    assert checked.returncode == 0, checked.stdout

    config = load(CONFIG)
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == ["alerts.yml"]
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "govesb-worker": ["worker:6066"],
        "govesb-sink": ["sink-utumishi:6067"],
        "govesb-gateway": ["gateway:8088"],
    }


def test_rules_are_valid(promtool: str) -> None:
    checked = run_promtool(promtool, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    tested = run_promtool(promtool, "test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout
    assert "SUCCESS" in tested.stdout, tested.stdout


def test_rule_unit_tests_fail_when_an_alert_is_broken(promtool: str, tmp_path: Path) -> None:
    # The same tests against a copy of the rules whose breaker alert waits for a state that
    # does not exist: they must fail, and say which alert.
    (tmp_path / "tests").mkdir()
    copied_tests = tmp_path / "tests" / RULE_TESTS.name
    shutil.copy(RULE_TESTS, copied_tests)
    text = RULES.read_text(encoding="utf-8")
    breaker = "max_over_time(govesb_sink_breaker_state[1m]) == 2"
    assert text.count(breaker) == 1

    (tmp_path / RULES.name).write_text(text, encoding="utf-8")
    intact = run_promtool(promtool, "test", "rules", copied_tests)
    assert intact.returncode == 0, intact.stdout

    broken = text.replace(breaker, breaker.replace("== 2", "== 3"))
    (tmp_path / RULES.name).write_text(broken, encoding="utf-8")
    failed = run_promtool(promtool, "test", "rules", copied_tests)
    assert failed.returncode != 0, failed.stdout
    assert "alertname: GovesbBreakerOpen" in failed.stdout, failed.stdout


def test_the_expected_alerts_exist_with_severity_summary_description_and_runbook() -> None:
    found = alerts()
    assert set(found) == EXPECTED_ALERTS
    headings = {
        line.lstrip("#").strip().lower()
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("### ")
    }
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        assert annotations["runbook"] == f"deploy/prometheus/README.md#{name.lower()}"
        assert name.lower() in headings, f"README.md has no runbook section for {name}"


def test_every_alert_has_a_case_that_fires_it_and_one_that_must_not() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_rules_read_only_metrics_the_processes_export() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    known = series_names() | recorded
    for rule in rules():
        name = rule.get("alert") or rule["record"]
        read = metric_names(rule["expr"])
        assert read, f"{name}: no metric found in {rule['expr']!r}"
        assert read <= known, f"{name} reads {sorted(read - known)}, which nothing exports"


def readme_metrics_table() -> dict[str, tuple[str, set[str], set[str], str]]:
    """The README's metrics table: name -> (type, labels, processes, meaning)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[str, set[str], set[str], str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        name, kind, labels, processes, meaning = (cell.strip() for cell in line.split("|")[1:-1])
        table[name.strip("`")] = (
            kind,
            set(re.findall(r"`([^`]+)`", labels)),
            {process.strip() for process in processes.split(",")},
            meaning,
        )
    return table


def test_readme_lists_exactly_the_exported_metric_families_with_their_labels() -> None:
    table = readme_metrics_table()
    exported = exported_metrics()
    assert set(table) == set(exported)
    for name, metric in exported.items():
        kind, labels, processes, meaning = table[name]
        assert (kind, labels, processes) == (metric.type, set(metric.labels), set(metric.processes))
        assert meaning, f"{name} has no meaning in the README"
