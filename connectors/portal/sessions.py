"""Who is signed in to the portal: server-side sessions with an idle expiry and a CSRF token.

A session is a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie naming a record held
in the portal's memory (a bounded map that forgets it ``ttl_s`` seconds after its last use).
Every visitor gets one before signing in, so the sign-in form carries a CSRF token too;
signing in replaces it with a new one (a session id seen before sign-in is never trusted
after). Institutions sign in with their gateway client credentials through the gateway's own
:class:`~connectors.gateway.auth.Authenticator` (its limits on failed attempts included);
operators with an account of their own.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cachetools import TTLCache

from connectors.gateway.auth import Authenticator, RateLimit, same_secret
from connectors.gateway.errors import HttpError

COOKIE = "govesb_portal"


@dataclass(frozen=True)
class Who:
    """A signed-in user: an operator of the bus, or an institution."""

    operator: str | None = None
    institution: str | None = None

    @property
    def label(self) -> str:
        """``operator:<name>`` or ``institution:<id>`` (as audit records name them)."""
        return f"operator:{self.operator}" if self.operator else f"institution:{self.institution}"


@dataclass
class Session:
    """One browser's session: its CSRF token and, once signed in, who it is."""

    id: str
    csrf: str
    who: Who | None = None

    def csrf_matches(self, given: str | None) -> bool:
        """Whether a form's token is this session's (constant time)."""
        return bool(given) and same_secret(self.csrf, given or "")


class SessionStore:
    """Sessions by id, each forgotten ``ttl_s`` seconds after its last use.

    Signed-in sessions and those of visitors who have not signed in are held apart, each map
    bounded: anyone can open sessions of the second kind, and filling that map never pushes
    out a signed-in user.
    """

    def __init__(
        self, ttl_s: float, max_sessions: int, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self._signed: TTLCache[str, Session] = TTLCache(max_sessions, ttl_s, timer=timer)
        self._visitors: TTLCache[str, Session] = TTLCache(max_sessions, ttl_s, timer=timer)

    def _map(self, session: Session) -> TTLCache[str, Session]:
        return self._visitors if session.who is None else self._signed

    def new(self, who: Who | None = None) -> Session:
        """A fresh session (new id, new CSRF token)."""
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), who)
        self._map(session)[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id (its expiry starts again), or None."""
        if not session_id:
            return None
        session = self._signed.get(session_id) or self._visitors.get(session_id)
        if session is not None:
            self._map(session)[session_id] = session  # setting it again restarts its time
        return session

    def end(self, session_id: str) -> None:
        """Forget a session (sign-out)."""
        self._signed.pop(session_id, None)
        self._visitors.pop(session_id, None)

    def __len__(self) -> int:
        """Signed-in sessions."""
        self._signed.expire()
        return len(self._signed)


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


class SignIn:
    """Checks the credentials of a sign-in form.

    ``clients`` authenticate exactly as at the gateway's ``/oauth/token`` (the same code and
    limits); ``operators`` are name to password. Failed operator sign-ins count per source
    address, like the gateway's failed token requests.
    """

    def __init__(
        self,
        clients: Mapping[str, str],
        operators: Mapping[str, str],
        failures_per_ip: int = 30,
    ) -> None:
        self.institutions = Authenticator(clients, token_ttl_s=60)
        self.operators = dict(operators)
        self.failures = RateLimit(failures_per_ip, failures_per_ip / 60)

    async def check(self, kind: str, name: str, secret: str, address: str) -> Who:
        """Who these credentials are; :class:`HttpError` (401 or 429) when they are not."""
        if kind == "institution":
            await self.institutions.issue_token(
                _basic(name, secret), {"grant_type": "client_credentials"}, address
            )
            return Who(institution=name)
        if wait := self.failures.retry_after(address):
            raise HttpError(429, "rate_limited", "too many failed sign-ins", retry_after=wait)
        expected = self.operators.get(name)
        if expected is None or not same_secret(expected, secret):
            await self.failures.take(address)
            raise HttpError(401, "invalid_client", "unknown account or wrong password")
        return Who(operator=name)
