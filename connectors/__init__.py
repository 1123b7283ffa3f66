"""GovESB connectors: bridges between bus topics and HTTP systems."""

from __future__ import annotations
