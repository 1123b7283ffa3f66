"""Access tokens checked by their MAC: what one gateway process issues, another accepts."""

from __future__ import annotations

import base64
import time

import pytest

from connectors.gateway.auth import Authenticator, TokenSigner
from connectors.gateway.errors import HttpError

KEY = b"k" * 32
SECRETS = {"nida": "nida-secret-0123456789", "rita": "rita-secret-0123456789"}
FORM = {"grant_type": "client_credentials"}


def _basic(client_id: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{SECRETS[client_id]}".encode()).decode()


async def _token(auth: Authenticator, client_id: str = "nida") -> str:
    issued = await auth.issue_token(_basic(client_id), FORM, "10.0.0.1")
    assert set(issued) == {"access_token", "token_type", "expires_in", "scope"}
    token = issued["access_token"]
    assert isinstance(token, str)
    return token


async def test_a_token_issued_by_one_process_is_accepted_by_another_with_the_key() -> None:
    issuer, other = Authenticator(SECRETS, token_key=KEY), Authenticator(SECRETS, token_key=KEY)
    token = await _token(issuer)
    for raw_token, header in ((False, f"Bearer {token}"), (True, token)):
        headers = {"Authorization": header}
        assert await other.institution_of(headers, "10.0.0.2", raw_token=raw_token) == "nida"
    assert other.token_owner(token) == "nida"
    # Each counts what it issued itself: the sum over the processes is the bus's.
    assert (issuer.live_tokens, other.live_tokens) == (1, 0)


async def test_without_the_key_a_token_is_unknown() -> None:
    token = await _token(Authenticator(SECRETS, token_key=KEY))
    stranger = Authenticator(SECRETS, token_key=b"x" * 32)
    with pytest.raises(HttpError) as refused:
        await stranger.institution_of({"Authorization": f"Bearer {token}"}, "10.0.0.2")
    assert (refused.value.status, refused.value.code) == (401, "invalid_token")
    # Two objects without a key given: each has its own random key.
    assert Authenticator(SECRETS).token_owner(await _token(Authenticator(SECRETS))) is None


async def test_tokens_are_unique_and_cannot_be_altered_to_name_another_client() -> None:
    auth = Authenticator(SECRETS, token_key=KEY, tokens_per_client=100)
    tokens = {await _token(auth) for _ in range(20)}
    assert len(tokens) == 20
    token = tokens.pop()
    body, _, mac = token.partition(".")
    text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    assert text.startswith("nida\n")
    forged_body = base64.urlsafe_b64encode(text.replace("nida", "rita", 1).encode()).decode()
    for forged in (
        f"{forged_body.rstrip('=')}.{mac}",
        f"{body}.{mac[:-2]}AA",
        body,
        f"{body}.",
        f".{mac}",
        "é" + token,
        token + "x" * 600,
    ):
        assert auth.token_owner(forged) is None, forged


def test_a_token_expires_at_its_expiry_on_the_wall_clock() -> None:
    signer = TokenSigner(KEY)
    token = signer.issue("nida", 1_000)
    assert signer.owner(token, 999.5) == "nida"
    assert signer.owner(token, 1_000) is None


async def test_a_token_of_a_client_no_longer_configured_is_refused() -> None:
    token = await _token(Authenticator(SECRETS, token_key=KEY), "rita")
    assert Authenticator({"nida": SECRETS["nida"]}, token_key=KEY).token_owner(token) is None


async def test_an_expired_token_is_refused_and_no_longer_counted() -> None:
    auth = Authenticator(SECRETS, token_key=KEY, token_ttl_s=1)
    token = await _token(auth)
    assert auth.live_tokens == 1
    expiry = int(time.time()) + 1
    assert auth.tokens.owner(token, expiry) is None
    with pytest.raises(HttpError) as refused:
        await Authenticator(SECRETS, token_key=KEY).institution_of(
            {"Authorization": f"Bearer {auth.tokens.issue('nida', int(time.time()) - 1)}"}, "?"
        )
    assert refused.value.code == "invalid_token"


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        TokenSigner(b"short")


def test_the_processes_of_one_command_share_one_token_key_unless_one_is_configured() -> None:
    from pydantic import SecretStr

    from connectors.gateway.processes import child_settings
    from connectors.gateway.runner import admin_port
    from connectors.settings import GatewaySettings

    made = SecretStr("m" * 43)
    settings = GatewaySettings(web_port=8088, process_count=3)
    children = [child_settings(settings, made) for _ in range(3)]
    assert {c.token_key.get_secret_value() for c in children if c.token_key} == {"m" * 43}
    assert {c.web_port for c in children} == {8088}  # the one shared port
    assert [admin_port(settings, i) for i in range(3)] == [8089, 8090, 8091]
    configured = GatewaySettings(token_key=SecretStr("c" * 32))
    assert child_settings(configured, made).token_key == configured.token_key
    assert "c" * 32 not in repr(configured)


def test_a_configured_token_key_must_be_long_enough() -> None:
    from pydantic import SecretStr, ValidationError

    from connectors.settings import GatewaySettings

    with pytest.raises(ValidationError, match="GOVESB_TOKEN_KEY needs at least 32"):
        GatewaySettings(token_key=SecretStr("short"))
    assert GatewaySettings().process_count == 1
