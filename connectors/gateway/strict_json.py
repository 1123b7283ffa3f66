"""Strict JSON bodies: what the gateway accepts, the pipeline accepts."""

from __future__ import annotations

import json
from typing import Any

from connectors.gateway.errors import HttpError

NOT_DATA = object()
"""What a body's ``data`` member is when its exact text is not JSON."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        # Parsers disagree on which of two equal keys wins; a signed or validated body must
        # have one meaning only.
        raise ValueError("duplicate key")
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_strict(raw: bytes) -> Any:
    """The body as JSON (RFC 8259): UTF-8 without BOM, no duplicate keys, no NaN or
    Infinity, every string valid Unicode; 400 ``invalid_json`` otherwise."""
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
        # A "\ud800" escape parses to a lone surrogate, which no UTF-8 event can carry.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeError and JSONDecodeError are ValueErrors
        raise HttpError(
            400,
            "invalid_json",
            "the body is not valid JSON (UTF-8, no duplicate keys, no lone surrogates)",
        ) from None
    return value


def is_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
