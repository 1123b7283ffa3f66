"""Who is calling: OAuth2 client credentials, bearer tokens, API keys, rate limits."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field

from connectors.gateway.errors import HttpError


@dataclass
class TokenBucket:
    """Per-institution rate limit: ``rate`` requests per second, bursts up to ``burst``."""

    rate: float
    burst: float
    tokens: float = 0.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """0 if allowed now, else seconds until the next request is allowed."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def same_secret(expected: str, given: str) -> bool:
    """Constant-time comparison; anything the client sent may hold non-ASCII characters."""
    return secrets.compare_digest(
        expected.encode("utf-8", "surrogateescape"), given.encode("utf-8", "surrogateescape")
    )


def basic_credentials(authorization: str | None) -> tuple[str, str]:
    if not authorization or not authorization.lower().startswith("basic "):
        raise HttpError(401, "invalid_client", "client authentication (HTTP Basic) is required")
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text
        raise HttpError(401, "invalid_client", "malformed Basic credentials") from None
    client_id, _, client_secret = decoded.partition(":")
    return client_id, client_secret
