"""The Grafana dashboards in ``deploy/grafana`` only query metrics and labels the bus exports.

Every PromQL expression is tokenized (no network, no Prometheus): the metric names it
selects must be sample names from ``tests.exported_metrics``, and the labels it matches on
or aggregates by must be labels of those metrics. A renamed metric or label then fails here
instead of leaving an empty panel in production.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.exported_metrics import exported_metrics, series_names

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "govesb-prometheus"

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})

AGGREGATIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
     "quantile", "count_values", "limitk", "limit_ratio"}
)  # fmt: skip
FUNCTIONS = frozenset(
    {"abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
     "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
     "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
     "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
     "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
     "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
     "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
     "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
     "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
     "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
     "sort_desc", "sqrt", "start", "end", "stddev_over_time", "stdvar_over_time",
     "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year"}
)  # fmt: skip
# Words that are neither metric names nor functions.
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
# Keywords followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
    | (?P<string>{_STRING})
    | (?P<variable>\$\{{[^}}]*\}}|\$\w+|\[\[[^\]]*\]\])
    | (?P<range>\[[^\]]*\])
    | (?P<matchers>\{{(?:{_STRING}|[^}}"'`])*\}})
    | (?P<number>[0-9.][0-9a-zA-Z_.]*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<lparen>\()
    | (?P<rparen>\))
    | (?P<operator>==|!=|>=|<=|[-+*/%^<>,@])
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(rf"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*(?:{_STRING})\s*,?")


class PromQLError(ValueError):
    """An expression this checker cannot read; a dashboard should not need one."""


@dataclass
class Token:
    """One lexical token; selectors carry their metric name and matched label names."""

    kind: str  # metric, agg, func, keyword, labels, lparen, rparen, other
    text: str
    labels: tuple[str, ...] = ()


@dataclass
class Usage:
    """What one expression reads: metric names, and label names per metric or per scope."""

    metrics: list[str] = field(default_factory=list)
    # (label, metrics the label must exist on, why) — checked against exported labels.
    label_uses: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)


def _matcher_labels(body: str) -> tuple[str, ...]:
    inner = body[1:-1]
    labels, position = [], 0
    while position < len(inner):
        match = _MATCHER.match(inner, position)
        if not match:
            raise PromQLError(f"unreadable label matchers {body!r}")
        labels.append(match.group(1))
        position = match.end()
    return tuple(labels)


def _next_significant(expr: str, position: int) -> str:
    rest = expr[position:].lstrip()
    return rest[:1]


def tokenize(expr: str) -> list[Token]:
    """Tokens of a PromQL expression, with Grafana ``$variables`` and ``[ranges]`` dropped."""
    tokens: list[Token] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if not match:
            raise PromQLError(f"unexpected {expr[position : position + 20]!r} in {expr!r}")
        kind, text = match.lastgroup or "", match.group()
        position = match.end()
        if kind in ("space", "string", "variable", "range", "number", "operator"):
            continue
        if kind == "matchers":
            if not tokens or tokens[-1].kind != "metric" or tokens[-1].labels:
                raise PromQLError(f"selector without a metric name in {expr!r}")
            tokens[-1].labels = _matcher_labels(text)
        elif kind == "ident":
            lowered = text.lower()
            if lowered in LABEL_LIST_KEYWORDS:
                if _next_significant(expr, position) != "(":
                    if lowered in ("group_left", "group_right"):
                        tokens.append(Token("labels", lowered))
                        continue
                    raise PromQLError(f"{text} without a label list in {expr!r}")
                end = expr.index(")", position)
                body = expr[expr.index("(", position) + 1 : end]
                labels = tuple(label.strip() for label in body.split(",") if label.strip())
                tokens.append(Token("labels", lowered, labels))
                position = end + 1
            elif lowered in AGGREGATIONS:
                tokens.append(Token("agg", lowered))
            elif lowered in KEYWORDS:
                tokens.append(Token("keyword", lowered))
            elif _next_significant(expr, position) == "(":
                if text not in FUNCTIONS:
                    raise PromQLError(f"unknown function {text}() in {expr!r}")
                tokens.append(Token("func", text))
            else:
                tokens.append(Token("metric", text))
        else:
            tokens.append(Token(kind, text))
    return tokens


def _matching_parens(tokens: list[Token]) -> dict[int, int]:
    pairs, stack = {}, []
    for index, token in enumerate(tokens):
        if token.kind == "lparen":
            stack.append(index)
        elif token.kind == "rparen":
            if not stack:
                raise PromQLError("unbalanced parentheses")
            opening = stack.pop()
            pairs[opening], pairs[index] = index, opening
    if stack:
        raise PromQLError("unbalanced parentheses")
    return pairs


def analyse(expr: str) -> Usage:
    """The metrics an expression selects and the labels it needs on them."""
    tokens = tokenize(expr)
    parens = _matching_parens(tokens)
    usage = Usage()
    every_metric = tuple(token.text for token in tokens if token.kind == "metric")
    for index, token in enumerate(tokens):
        if token.kind == "metric":
            usage.metrics.append(token.text)
            for label in token.labels:
                usage.label_uses.append((label, (token.text,), f"{{{label}=…}}"))
        elif token.kind == "labels" and token.text in ("by", "without"):
            # `agg by (l) (args)` or `agg (args) by (l)`: the labels must be on every metric
            # the aggregation reads.
            before = tokens[index - 1] if index else None
            if before is not None and before.kind == "agg":
                start = index + 1
            elif before is not None and before.kind == "rparen":
                start = parens[index - 1]
                if start == 0 or tokens[start - 1].kind != "agg":
                    raise PromQLError(f"{token.text} (…) after no aggregation in {expr!r}")
            else:
                raise PromQLError(f"{token.text} (…) after no aggregation in {expr!r}")
            if start >= len(tokens) or tokens[start].kind != "lparen":
                raise PromQLError(f"aggregation without arguments in {expr!r}")
            scope = tuple(t.text for t in tokens[start : parens[start] + 1] if t.kind == "metric")
            for label in token.labels:
                usage.label_uses.append((label, scope, f"{token.text} ({label})"))
        elif token.kind == "labels":
            # on/ignoring: both sides have the label; group_left/right: the "one" side has it.
            for label in token.labels:
                usage.label_uses.append((label, every_metric, f"{token.text} ({label})"))
    return usage


def _labels_of(series: str) -> set[str] | None:
    """The labels a stored series has, or None for a series name nobody exports."""
    if series == "up":
        return set(TARGET_LABELS)
    for metric in exported_metrics().values():
        if series in metric.series_names:
            extra = {"le"} if series.endswith("_bucket") and metric.type == "histogram" else set()
            return set(metric.labels) | TARGET_LABELS | extra
    return None


def problems_in_expr(expr: str) -> list[str]:
    """Unknown metrics and labels in one PromQL expression, as human sentences."""
    try:
        usage = analyse(expr)
    except PromQLError as error:
        return [f"unreadable PromQL: {error}"]
    if not usage.metrics:
        return [f"no metric in {expr!r}"]
    known = series_names()
    found = [f"unknown metric {name}" for name in usage.metrics if name not in known]
    for label, metrics, where in usage.label_uses:
        for name in metrics:
            labels = _labels_of(name)
            if labels is not None and label not in labels:
                found.append(f"label {label!r} ({where}) is not a label of {name}")
    return found


def problems_in_variable_query(query: str) -> list[str]:
    """``label_values(selector, label)``; any other query type is read as PromQL."""
    match = re.fullmatch(r"\s*label_values\((.*)\)\s*", query, re.DOTALL)
    if not match:
        inner = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL)
        return problems_in_expr(inner.group(1) if inner else query)
    selector, _, label = match.group(1).rpartition(",")
    if not selector:
        return [f"label_values without a metric: {query!r}"]
    found = problems_in_expr(selector)
    label = label.strip()
    for name in analyse(selector).metrics if not found else ():
        labels = _labels_of(name)
        if labels is not None and label not in labels:
            found.append(f"label {label!r} (label_values) is not a label of {name}")
    return found


def _datasource_uid(holder: dict[str, Any]) -> str | None:
    datasource = holder.get("datasource")
    return datasource.get("uid") if isinstance(datasource, dict) else datasource


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _layout_problems(dashboard: dict[str, Any]) -> list[str]:
    """Panels wider than the 24-column grid or covering one another."""
    found, taken = [], {}
    for panel in dashboard.get("panels", []):
        pos = panel.get("gridPos", {})
        if not {"h", "w", "x", "y"} <= set(pos):
            continue
        if pos["x"] + pos["w"] > 24:
            found.append(f"panel {panel.get('id')} is wider than the grid")
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in taken:
                    found.append(f"panel {panel.get('id')} overlaps panel {taken[x, y]}")
                    break
                taken[x, y] = panel.get("id")
            else:
                continue
            break
    return found


def dashboard_problems(dashboard: dict[str, Any], name: str) -> list[str]:
    """Everything wrong with one dashboard, each naming dashboard, panel and cause."""
    found = []
    for key in ("uid", "title", "schemaVersion"):
        if not dashboard.get(key):
            found.append(f"{name}: no {key}")
    ids = [panel.get("id") for panel in _panels(dashboard)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if duplicates or None in ids:
        found.append(f"{name}: panel ids not unique or missing: {duplicates or ids}")
    found.extend(f"{name}: {problem}" for problem in _layout_problems(dashboard))
    for panel in _panels(dashboard):
        title = panel.get("title")
        where = f"{name}: panel {panel.get('id')} {title!r}"
        if not title:
            found.append(f"{where}: no title")
        if not {"h", "w", "x", "y"} <= set(panel.get("gridPos", {})):
            found.append(f"{where}: no gridPos")
        if panel.get("type") == "row":
            continue
        if _datasource_uid(panel) != DATASOURCE_UID:
            found.append(f"{where}: datasource is not {DATASOURCE_UID}")
        targets = panel.get("targets") or []
        if not targets:
            found.append(f"{where}: no targets")
        for target in targets:
            if "datasource" in target and _datasource_uid(target) != DATASOURCE_UID:
                found.append(f"{where}: target {target.get('refId')} datasource is not ours")
            expr = target.get("expr")
            if not expr:
                found.append(f"{where}: target {target.get('refId')} has no expr")
                continue
            found.extend(f"{where}: {problem}" for problem in problems_in_expr(expr))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        where = f"{name}: variable ${variable.get('name')}"
        if _datasource_uid(variable) != DATASOURCE_UID:
            found.append(f"{where}: datasource is not {DATASOURCE_UID}")
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        found.extend(f"{where}: {problem}" for problem in problems_in_variable_query(query or ""))
    return found


def test_every_dashboard_is_found() -> None:
    assert {path.name for path in DASHBOARDS} >= {
        "govesb-flow.json",
        "govesb-institution.json",
        "govesb-connectors.json",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_is_valid_and_queries_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert dashboard_problems(dashboard, path.name) == []


def test_dashboard_uids_are_unique() -> None:
    uids = [json.loads(path.read_text(encoding="utf-8"))["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids)), uids


def test_institution_dashboard_is_templated_on_publisher() -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "govesb-institution.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "institution"]
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    assert query == "label_values(govesb_pipeline_events_total, publisher)"


def _panel(expr: str) -> dict[str, Any]:
    datasource = {"type": "prometheus", "uid": DATASOURCE_UID}
    return {
        "id": 1,
        "title": "Bad",
        "type": "timeseries",
        "datasource": datasource,
        "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
        "targets": [{"refId": "A", "datasource": datasource, "expr": expr}],
    }


def test_checker_flags_an_unknown_metric() -> None:
    dashboard = {
        "uid": "x",
        "title": "X",
        "schemaVersion": 39,
        "panels": [_panel("sum(rate(govesb_no_such_metric_total[5m]))")],
    }
    assert dashboard_problems(dashboard, "bad.json") == [
        "bad.json: panel 1 'Bad': unknown metric govesb_no_such_metric_total"
    ]


def test_checker_flags_duplicate_ids_foreign_datasource_and_no_targets() -> None:
    other = _panel("up")
    other["datasource"] = {"type": "prometheus", "uid": "someone-else"}
    other["targets"] = []
    other["gridPos"] = {"h": 8, "w": 12, "x": 12, "y": 0}
    dashboard = {"uid": "x", "title": "X", "schemaVersion": 39, "panels": [_panel("up"), other]}
    assert dashboard_problems(dashboard, "bad.json") == [
        "bad.json: panel ids not unique or missing: [1]",
        "bad.json: panel 1 'Bad': datasource is not govesb-prometheus",
        "bad.json: panel 1 'Bad': no targets",
    ]


def test_checker_flags_overlapping_panels() -> None:
    second = _panel("up")
    second["id"] = 2
    second["gridPos"] = {"h": 8, "w": 12, "x": 6, "y": 4}
    dashboard = {"uid": "x", "title": "X", "schemaVersion": 39, "panels": [_panel("up"), second]}
    assert dashboard_problems(dashboard, "bad.json") == ["bad.json: panel 2 overlaps panel 1"]


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('rate(govesb_sink_dlq_total{publisher="$institution"}[5m])',
         "label 'publisher' ({publisher=…}) is not a label of govesb_sink_dlq_total"),
        ("sum by (reason) (rate(govesb_pipeline_events_total[$__rate_interval]))",
         "label 'reason' (by (reason)) is not a label of govesb_pipeline_events_total"),
        ("sum(rate(govesb_pipeline_events_total[5m])) by (subscriber)",
         "label 'subscriber' (by (subscriber)) is not a label of govesb_pipeline_events_total"),
        ("histogram_quantile(0.99, sum by (le) (rate(govesb_pipeline_in_flight[5m])))",
         "label 'le' (by (le)) is not a label of govesb_pipeline_in_flight"),
        ("govesb_pipeline_events", "unknown metric govesb_pipeline_events"),
        ("histogram_quantil(0.9, x)", "unreadable PromQL: unknown function histogram_quantil()"),
    ],
)  # fmt: skip
def test_checker_flags_unknown_labels_and_names(expr: str, problem: str) -> None:
    problems = problems_in_expr(expr)
    assert any(found.startswith(problem) for found in problems), problems


def test_checker_reads_what_it_must_skip() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, subscriber) (rate(govesb_delivery_end_to_end_"
        'seconds_bucket{subscriber=~"$subscriber", job="govesb-sink"}[$__rate_interval] '
        "offset 1h))) / on (subscriber) group_left sum without (instance) "
        "(govesb_sink_breaker_state{subscriber=~'rate|by'}) > bool ${threshold}"
    )
    usage = analyse(expr)
    assert usage.metrics == [
        "govesb_delivery_end_to_end_seconds_bucket",
        "govesb_sink_breaker_state",
    ]
    assert problems_in_expr(expr) == []


def test_checker_flags_label_values_of_unknown_label() -> None:
    assert problems_in_variable_query("label_values(govesb_sink_dlq_total, publisher)") == [
        "label 'publisher' (label_values) is not a label of govesb_sink_dlq_total"
    ]
    assert problems_in_variable_query("label_values(govesb_nope_total, x)") == [
        "unknown metric govesb_nope_total"
    ]


def test_datasource_provisioning_has_the_uid_the_dashboards_use() -> None:
    config = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    (datasource,) = config["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True


def test_dashboard_provisioning_loads_the_mounted_folder() -> None:
    config = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "govesb.yml").read_text(encoding="utf-8")
    )
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "GovESB"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
