"""What ``/health`` and ``/metrics`` of every bus process answer, in one form."""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = dict[str, Any]
"""One component's check: ``ok`` (bool) and whatever explains it."""


class RegistryViewLike(Protocol):
    """What a health check needs of ``streams.registry.view.RegistryView``."""

    @property
    def event_types(self) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]: ...


def report(checks: dict[str, Check]) -> tuple[int, dict[str, Any]]:
    """200 and ``ok`` when every check passes, else 503 and ``degraded``, with the checks."""
    ok = all(bool(check["ok"]) for check in checks.values())
    return (200 if ok else 503), {"status": "ok" if ok else "degraded", "checks": checks}


def registry_view_check(view: RegistryViewLike) -> Check:
    """The registry view: loaded, not stale, and knowing event types.

    An unreadable record withholds only its institution and is listed; it does not fail the
    probe, or every process would be restarted over one record.
    """
    state = view.health()
    return {
        **state,
        "ok": bool(state["loaded"] and not state["stale"] and view.event_types),
    }


def metrics_text(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
