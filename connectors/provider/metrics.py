"""The provider connector's Prometheus metrics (names start with ``govesb_provider_``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram


class ProviderMetrics:
    """Metrics of one provider connector process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "govesb_provider_requests",
            "Requests answered, by api code and outcome (answered, or the reason of the "
            "provider-error answer; not-from-bus: a record the bus did not route, ignored; "
            "expired: read after its ticket's last moment, when the bus takes no answer, not "
            "sent).",
            ["provider", "api", "outcome"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "govesb_provider_attempts",
            "HTTP requests sent to the provider, by status ('error' for connection errors and "
            "timeouts, 'token' when no OAuth2 token could be had).",
            ["provider", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "govesb_provider_request_seconds",
            "Duration of one HTTP request to the provider.",
            ["provider"],
            registry=self.registry,
        )
        self.round_trip = Histogram(
            "govesb_provider_answer_seconds",
            "From reading a request to producing its answer (every attempt included).",
            ["provider", "api"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached (labels() costs a lock and a tuple per call)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
