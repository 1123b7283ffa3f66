"""Prometheus metrics of the pipeline worker; every name starts with ``govesb_``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PipelineMetrics:
    """The worker's metrics, in their own registry (one per app, so tests can make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "govesb_pipeline_events",
            "Ingress events handled, by publisher, event type and outcome.",
            ["publisher", "event_type", "outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "govesb_pipeline_rejections",
            "Rejected ingress events by publisher and reason code.",
            ["publisher", "reason"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "govesb_pipeline_deliveries",
            "Events fanned out to a subscriber's delivery topic.",
            ["subscriber", "event_type"],
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "govesb_pipeline_delivery_failures",
            "Deliveries the bus could not make to one agreement (its own fault, e.g. a pinned "
            "schema version the registry lacks); the event went to the other agreements and a "
            "replayable copy to esb.rejected.<publisher>.",
            ["subscription", "subscriber", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "govesb_pipeline_processing_seconds",
            "From reading an ingress record to the broker acknowledging all its outputs.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.lag = Gauge(
            "govesb_consumer_lag",
            "Ingress records not yet processed and acknowledged, per topic partition.",
            ["group", "topic", "partition"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "govesb_pipeline_in_flight",
            "Events processed whose outputs the broker has not acknowledged yet.",
            registry=self.registry,
        )
        self.send_retries = Counter(
            "govesb_pipeline_send_retries",
            "Outputs sent again after the broker did not acknowledge them.",
            registry=self.registry,
        )
        self.in_flight_bytes = Gauge(
            "govesb_pipeline_in_flight_bytes",
            "Bytes of the events in flight: ingress records and every output of them.",
            registry=self.registry,
        )
        self.oldest_in_flight = Gauge(
            "govesb_pipeline_oldest_in_flight_seconds",
            "Age of the oldest event whose outputs are not all acknowledged (0: none waits).",
            registry=self.registry,
        )
        self.output_errors = Counter(
            "govesb_pipeline_output_errors",
            "Errors of the broker on outputs, by error and what it means "
            "(transient: sent again, refused: replaced by a rejection or a cut copy, fatal).",
            ["error", "failure"],
            registry=self.registry,
        )
        self.undeliverable = Counter(
            "govesb_pipeline_undeliverable",
            "Outputs the broker refused for good, replaced by an undeliverable rejection.",
            ["topic"],
            registry=self.registry,
        )
        self.rejections_cut = Counter(
            "govesb_pipeline_rejections_cut",
            "Rejection copies cut (value, then key and headers dropped) to fit what the "
            "broker takes.",
            ["publisher"],
            registry=self.registry,
        )
        self.halted_partitions = Gauge(
            "govesb_pipeline_halted_partitions",
            "Ingress partitions held because an output of theirs could not be written at "
            "all (not even its rejection); they stay held until the worker restarts.",
            registry=self.registry,
        )
        self.calls = Counter(
            "govesb_pipeline_calls",
            "Requests and answers by api code and what became of them: routed, refused, "
            "answered, provider-error, answer-refused.",
            ["api", "outcome"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "govesb_pipeline_call_seconds",
            "From a request's ce_time to its answer passing the pipeline, by api code.",
            ["api"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.acker_up = Gauge(
            "govesb_pipeline_acker_up",
            "1 while the tasks that ack ingress events run; 0 once one died (the worker exits).",
            registry=self.registry,
        )
        self.registry_version = Gauge(
            "govesb_registry_records_applied",
            "Records of esb.registry applied by this process since it started.",
            registry=self.registry,
        )
