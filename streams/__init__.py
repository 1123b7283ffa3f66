"""GovESB, the bus itself: event contract, registry, Faust pipeline, audit, client SDK, CLI, DR."""

from __future__ import annotations

__version__ = "0.1.0"
