"""How the sink talks HTTP: response bodies read up to a cap, no redirects, OAuth2 tokens.

One redirect policy for the delivery and the token request: none is followed. The endpoint
and token URLs in the registry are the agreed destinations of personal data and of the
subscriber's credentials; following a ``Location`` would send both where no agreement names.
A 3xx is therefore a permanent failure whose error says so; the fix is the registry's URL.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from connectors.http_sink.delivery import basic_auth, verdict

REDIRECT_REFUSED = "redirects are not followed: the URL in the registry must be the final one"


class TokenUnavailableError(Exception):
    """No OAuth2 token: ``retryable`` when the token endpoint may recover by itself
    (unreachable, timeout, 408/425/429/5xx); otherwise the configuration is wrong (e.g. 401)."""

    def __init__(self, detail: str, *, retryable: bool) -> None:
        super().__init__(detail)
        self.retryable = retryable


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the response body.

    What lies beyond is never read: the connection is closed instead of being drained, so an
    endpoint answering an endless or huge body costs ``limit`` bytes and no wait.
    """
    first = await response.content.read(limit)
    if response.content.at_eof():  # the whole body at once: the common, small answer
        return first
    chunks: list[bytes] = [first]
    size = len(first)
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    if not response.content.at_eof():
        response.close()  # not reusable: the rest of the body is still on the wire
    return b"".join(chunks)


def excerpt(status: int, body: bytes) -> str:
    """The error kept for a non-2xx answer: the status and the start of the body (short,
    whatever the cap on reading it)."""
    if 300 <= status < 400:
        return f"HTTP {status}: {REDIRECT_REFUSED}"
    return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"


async def fetch_token(
    session: aiohttp.ClientSession,
    url: str,
    client_id: str,
    secret: str,
    *,
    client_timeout: aiohttp.ClientTimeout,
    ssl_option: ssl.SSLContext | bool,
    max_body_bytes: int,
) -> tuple[str, float]:
    """An OAuth2 client-credentials token and its lifetime in seconds.

    Raises:
        TokenUnavailableError: no token; ``retryable`` tells whether waiting may help.
    """
    try:
        async with session.post(
            url,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic_auth(client_id, secret)},
            timeout=client_timeout,
            ssl=ssl_option,
            allow_redirects=False,
        ) as response:
            status = response.status
            body = await read_capped(response, max_body_bytes)
    except aiohttp.InvalidURL as error:
        raise TokenUnavailableError(f"token URL invalid: {error}", retryable=False) from None
    except (aiohttp.ClientError, TimeoutError) as error:
        detail = f"token endpoint unreachable: {type(error).__name__}"
        raise TokenUnavailableError(detail, retryable=True) from None
    if status != 200:
        retryable = verdict(status) == "retry"
        raise TokenUnavailableError(f"token endpoint: {excerpt(status, body)}", retryable=retryable)
    try:
        answer: Any = json.loads(body)
        token = answer["access_token"]
        lifetime = float(answer.get("expires_in", 300))
    except (ValueError, TypeError, KeyError, AttributeError):
        token = None
        lifetime = 0.0
    if not isinstance(token, str) or not token:
        raise TokenUnavailableError(
            "token endpoint answered 200 without an access_token", retryable=False
        )
    return token, lifetime
