"""Who is calling: OAuth2 client credentials, bearer tokens, API keys, rate limits."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiolimiter import AsyncLimiter
from cachetools import TTLCache

from connectors.gateway.errors import HttpError

MAX_LIMITED_KEYS = 100_000
"""Most keys (institutions, client ids, source addresses) with a rate limit held at once; past
it the least recently used is forgotten (a key idle long enough is forgotten anyway)."""


class RateLimit:
    """At most ``burst`` at once, then ``per_s`` a second, per key (a leaky bucket each).

    Each key's bucket is an ``aiolimiter.AsyncLimiter``, held while the key is in use: a
    bucket idle for ``burst / per_s`` seconds has drained, so forgetting it then changes
    nothing, and the keys an attacker invents cannot grow the memory past ``max_keys``.
    """

    def __init__(self, burst: float, per_s: float, max_keys: int = MAX_LIMITED_KEYS) -> None:
        if burst < 1 or per_s <= 0:
            raise ValueError("a rate limit needs burst >= 1 and per_s > 0")
        self.burst, self.per_s = burst, per_s
        self._buckets: TTLCache[str, AsyncLimiter] = TTLCache(
            maxsize=max_keys, ttl=burst / per_s, timer=time.monotonic
        )

    def _bucket(self, key: str) -> AsyncLimiter:
        bucket = self._buckets.get(key) or AsyncLimiter(self.burst, self.burst / self.per_s)
        self._buckets[key] = bucket  # setting it again restarts its time to be forgotten
        return bucket

    def _wait(self, bucket: AsyncLimiter) -> int:
        if bucket.has_capacity():
            return 0
        # Full: one unit drains in 1 / per_s seconds, and then there is room for one.
        return max(1, math.ceil(1 / self.per_s))

    def retry_after(self, key: str) -> int:
        """0 if ``key`` may go on now, else whole seconds until it may (at least 1)."""
        return self._wait(self._bucket(key))

    async def take(self, key: str) -> int:
        """Count one for ``key`` and return 0, or return ``retry_after`` if it is spent."""
        bucket = self._bucket(key)
        wait = self._wait(bucket)
        if not wait:
            await bucket.acquire()  # there is room: returns without waiting
        return wait

    def __len__(self) -> int:
        self._buckets.expire()
        return len(self._buckets)


TOKEN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 512  # a token issued here is ~110 characters; longer is no token of ours
_TOKEN_CONTEXT = b"govesb-gateway-access-token-v1\0"


class TokenSigner:
    """Access tokens that carry who they were issued to, checked by an HMAC, not a lookup.

    A token is ``base64url(client id, expiry, nonce) "." base64url(HMAC-SHA256)`` under
    ``key``: every gateway process given the same key accepts every token any of them issued
    (``govesb connect gateway --processes N`` hands its children one key; several machines
    share ``GOVESB_TOKEN_KEY``), and none holds a table of tokens. The expiry is wall-clock
    time (seconds since the epoch), which processes and machines share. The nonce (128 random
    bits) makes every token unique; the MAC makes one unforgeable without the key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < TOKEN_KEY_BYTES // 2:
            raise ValueError("a token key needs at least 16 bytes")
        self._key = key

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, _TOKEN_CONTEXT + body.encode(), hashlib.sha256).digest()

    def issue(self, client_id: str, expires_at: int) -> str:
        """A token for ``client_id`` valid until ``expires_at`` (epoch seconds)."""
        nonce = secrets.token_hex(16)
        body = _b64(f"{client_id}\n{expires_at}\n{nonce}".encode("utf-8", "surrogateescape"))
        return f"{body}.{_b64(self._mac(body))}"

    def owner(self, token: str, now: float) -> str | None:
        """The client ``token`` was issued to, or None: not ours, tampered or expired."""
        if len(token) > MAX_TOKEN_CHARS:
            return None
        body, dot, mac = token.partition(".")
        if not dot or not token.isascii():
            return None
        try:
            given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
            if not hmac.compare_digest(given, self._mac(body)):
                return None
            text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            client_id, expires_at, _nonce = text.decode("utf-8", "surrogateescape").rsplit("\n", 2)
            expiry = int(expires_at)
        except (ValueError, binascii.Error):
            return None
        return client_id if now < expiry else None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _limited(wait: int, message: str) -> HttpError:
    return HttpError(429, "rate_limited", message, retry_after=wait)


class Authenticator:
    """The clients, the tokens issued to them and the limits on both.

    ``clients`` maps client id (the institution id) to its secret. Tokens live
    ``token_ttl_s`` seconds and are checked by their MAC under ``token_key`` (a
    :class:`TokenSigner`; a random key when none is given: then only this object accepts
    them); a token of a client no longer in ``clients`` is refused. The token
    endpoint counts, per client id and per source address, the attempts that failed and
    refuses further ones with 429 while either count is spent, so secrets cannot be guessed
    at the speed of the network; issued tokens are limited per client too. The limits on
    tokens count per ``token_limit_period_s``: that many at once, then evenly over the period.
    """

    def __init__(
        self,
        clients: Mapping[str, str],
        *,
        rate_per_s: float = 100.0,
        burst: float = 200.0,
        token_ttl_s: int = 3600,
        max_live_tokens: int = 100_000,
        token_failures_per_client: int = 10,
        token_failures_per_ip: int = 30,
        tokens_per_client: int = 10,
        token_limit_period_s: float = 60.0,
        token_key: bytes | None = None,
    ) -> None:
        self.clients = dict(clients)
        self.token_ttl_s = token_ttl_s
        self.tokens = TokenSigner(token_key or secrets.token_bytes(TOKEN_KEY_BYTES))
        # Only counted (``live_tokens``): a token is accepted by its MAC, not found here.
        self._issued: TTLCache[str, float] = TTLCache(
            maxsize=max_live_tokens, ttl=token_ttl_s, timer=time.monotonic
        )
        self.requests = RateLimit(burst, rate_per_s)
        per_period = 1 / token_limit_period_s
        self.client_failures = RateLimit(
            token_failures_per_client, token_failures_per_client * per_period
        )
        self.address_failures = RateLimit(token_failures_per_ip, token_failures_per_ip * per_period)
        self.issued = RateLimit(tokens_per_client, tokens_per_client * per_period)

    @property
    def live_tokens(self) -> int:
        """Tokens this object issued that have not expired (at most ``max_live_tokens``
        counted). With several gateway processes, each counts its own: their sum is the bus's.
        """
        self._issued.expire()
        return len(self._issued)

    async def issue_token(
        self, authorization: str | None, form: Mapping[str, str], address: str
    ) -> dict[str, Any]:
        """OAuth2 client credentials with HTTP Basic client authentication, from ``address``.

        The reply has exactly ``access_token``, ``token_type``, ``expires_in`` and ``scope``:
        GovESB's Java connector (0.1.5) fails on any other field.
        """
        if form.get("grant_type") != "client_credentials":
            raise HttpError(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if wait := self.address_failures.retry_after(address):
            raise _limited(wait, "too many failed attempts from this address")
        try:
            client_id, client_secret = basic_credentials(authorization)
        except HttpError:
            await self.address_failures.take(address)
            raise
        expected = self.clients.get(client_id)
        # Unknown ids share buckets by digest: bounded keys, and no sign of which ids exist.
        client_key = client_id if expected is not None else _digest(client_id)
        if wait := self.client_failures.retry_after(client_key):
            raise _limited(wait, "too many failed attempts for this client")
        if expected is None or not same_secret(expected, client_secret):
            await self.client_failures.take(client_key)
            await self.address_failures.take(address)
            raise HttpError(401, "invalid_client", "unknown client or wrong secret")
        if wait := await self.issued.take(client_id):
            raise _limited(wait, "too many tokens requested for this client")
        token = self.tokens.issue(client_id, int(time.time()) + self.token_ttl_s)
        self._issued[token] = time.monotonic()
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_ttl_s,
            "scope": f"publish:{client_id}",
        }

    def token_owner(self, token: str) -> str | None:
        """The institution a live token was issued to (and still a client), or None."""
        owner = self.tokens.owner(token, time.time())
        return owner if owner is not None and owner in self.clients else None

    async def institution_of(
        self, headers: Mapping[str, str], address: str, *, raw_token: bool = False
    ) -> str:
        """The authenticated institution: bearer token (or X-API-Key = client secret), within
        its request rate. A wrong API key counts as a failed attempt from ``address``.

        ``raw_token`` also takes ``Authorization: <token>`` without the ``Bearer `` prefix,
        as e-GA's Java connector 0.1.5 sends it on its push and NIDA requests (the GovESB
        engine paths); a value that is no live token is refused like an unknown bearer token.
        """
        header = headers.get("Authorization", "")
        token: str | None = None
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        elif raw_token and header.strip():
            token = header.strip()
        if token is not None:
            found = self.token_owner(token)
            if found is None:
                raise HttpError(401, "invalid_token", "unknown or expired bearer token")
            institution = found
        elif "X-API-Key" in headers:
            if wait := self.address_failures.retry_after(address):
                raise _limited(wait, "too many failed attempts from this address")
            key = headers["X-API-Key"]
            matches = [c for c, s in self.clients.items() if same_secret(s, key)]
            if not matches:
                await self.address_failures.take(address)
                raise HttpError(401, "invalid_api_key", "unknown API key")
            institution = matches[0]
        else:
            raise HttpError(401, "unauthenticated", "send Authorization: Bearer <token>")
        if wait := await self.requests.take(institution):
            raise _limited(wait, "too many requests")
        return institution


def _digest(text: str) -> str:
    return "?" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:4]


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
