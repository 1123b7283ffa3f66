"""Metrics of the portal process; names start with ``govesb_portal_``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class PortalMetrics:
    """Sign-ins, data-tracker lookups and dead-letter replays, by outcome."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sign_ins = Counter(
            "govesb_portal_sign_ins",
            "Portal sign-ins by kind (institution, operator) and outcome (ok, refused, limited).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.lookups = Counter(
            "govesb_portal_tracker_lookups",
            "Data-tracker lookups by asker kind (institution, operator) and outcome "
            "(allowed, refused).",
            ["asker", "outcome"],
            registry=self.registry,
        )
        self.replayed = Counter(
            "govesb_portal_replayed_dead_letters",
            "Dead letters operators replayed from the portal, by subscriber.",
            ["subscriber"],
            registry=self.registry,
        )
