"""GovESB event contract and stream pipeline."""

from __future__ import annotations

__version__ = "0.1.0"
