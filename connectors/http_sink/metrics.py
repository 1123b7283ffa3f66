"""The HTTP sink's Prometheus metrics (names start with ``govesb_sink_``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


class SinkMetrics:
    """Metrics of one sink process; names start with ``govesb_sink_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "govesb_sink_deliveries",
            "Records finished, by outcome (delivered, dead-lettered) and last HTTP status.",
            ["subscriber", "outcome", "status"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "govesb_sink_attempts",
            "HTTP requests sent, by status ('error' for connection errors and timeouts).",
            ["subscriber", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "govesb_sink_request_seconds",
            "Duration of one HTTP request to the endpoint.",
            ["subscriber"],
            registry=self.registry,
        )
        self.breaker = Gauge(
            "govesb_sink_breaker_state",
            "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open.",
            ["subscriber"],
            registry=self.registry,
        )
        self.dlq = Counter(
            "govesb_sink_dlq",
            "Records written to esb.dlq.<subscriber>.",
            ["subscriber"],
            registry=self.registry,
        )
        self.end_to_end = Histogram(
            "govesb_delivery_end_to_end_seconds",
            "From the event's ce_time (set by the publisher) to the endpoint's 2xx answer.",
            ["subscriber"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.lag = Gauge(
            "govesb_consumer_lag",
            "Delivery records not yet delivered or dead-lettered, per topic partition.",
            ["group", "topic", "partition"],
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (it is on every delivery's path)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
