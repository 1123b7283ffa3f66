"""Every metric the bus's processes export, read from their own metric classes (no network).

Dashboards, alert rules and the metrics table in ``deploy/prometheus/README.md`` are checked
against this, so a renamed metric fails a test instead of leaving an empty panel.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from connectors.gateway.app import GatewayMetrics
from connectors.gateway.calls import HeldCalls
from connectors.gateway.replies import RequestMetrics
from connectors.http_sink.metrics import SinkMetrics
from connectors.portal.metrics import PortalMetrics
from connectors.provider.metrics import ProviderMetrics
from streams.pipeline.metrics import PipelineMetrics

SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


@dataclass(frozen=True)
class ExportedMetric:
    """One metric family: its name, type, labels and which processes export it."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    processes: tuple[str, ...]

    @property
    def series_names(self) -> set[str]:
        """The sample names Prometheus stores (``_total``, ``_bucket`` …)."""
        return {self.name + suffix for suffix in SUFFIXES[self.type]}


def _families(process: str, registry: CollectorRegistry) -> list[ExportedMetric]:
    found = []
    for collector in list(registry._collector_to_names):
        for family in collector.describe():
            labels = tuple(getattr(collector, "_labelnames", ()))
            found.append(ExportedMetric(family.name, family.type, labels, family.documentation,
                                        (process,)))  # fmt: skip
    return found


def _gateway_registry() -> CollectorRegistry:
    registry = GatewayMetrics().registry
    RequestMetrics(registry, HeldCalls())  # the request routes' metrics, in the same registry
    return registry


def exported_metrics() -> dict[str, ExportedMetric]:
    """Metric families by name, merged across worker, sink, gateway, provider connector and
    portal."""
    merged: dict[str, ExportedMetric] = {}
    for process, registry in (
        ("worker", PipelineMetrics().registry),
        ("sink", SinkMetrics().registry),
        ("gateway", _gateway_registry()),
        ("provider", ProviderMetrics().registry),
        ("portal", PortalMetrics().registry),
    ):
        for metric in _families(process, registry):
            seen = merged.get(metric.name)
            if seen is None:
                merged[metric.name] = metric
            else:
                assert (seen.type, seen.labels) == (metric.type, metric.labels), metric.name
                merged[metric.name] = ExportedMetric(
                    seen.name, seen.type, seen.labels, seen.help, (*seen.processes, process)
                )
    return merged


def series_names() -> set[str]:
    """Every sample name, plus Prometheus's own ``up`` for scrape targets."""
    names = {"up"}
    for metric in exported_metrics().values():
        names |= metric.series_names
    return names
