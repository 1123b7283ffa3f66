"""The worker and the gateway refuse to sign with a published demo key outside the dev stack;
the worker will not sign deliveries with the gateway's key."""

from __future__ import annotations

from typer.testing import CliRunner

from connectors.cli import app
from deploy.worker import DEMO_BUS_KEY, DEMO_BUS_KEY_ID, DEMO_GATEWAY_KEY, DEMO_GATEWAY_KEY_ID


def _worker(**env: str):
    # No broker at this address: each refusal comes before any connection.
    return CliRunner().invoke(
        app,
        ["--bootstrap", "127.0.0.1:9", "worker"],
        env={
            "GOVESB_SIGNING_KEY_FILE": str(DEMO_BUS_KEY),
            "GOVESB_SIGNING_KEY_ID": DEMO_BUS_KEY_ID,
            "GOVESB_ALLOW_DEMO_KEYS": None,  # unset, as outside the dev stack
            **env,
        },
    )


def test_the_worker_will_not_start_with_a_demo_key_outside_the_dev_stack() -> None:
    result = _worker()
    assert result.exit_code == 2
    assert "ega-d06f8e0a5d19 is a published demo key" in " ".join(result.stderr.split())


def test_the_worker_will_not_sign_deliveries_with_the_gateway_key() -> None:
    result = _worker(
        GOVESB_ALLOW_DEMO_KEYS="true",
        GOVESB_SIGNING_KEY_ID=DEMO_GATEWAY_KEY_ID,
        GOVESB_GATEWAY_KEY_IDS=DEMO_GATEWAY_KEY_ID,
    )
    assert result.exit_code == 2
    assert "is a gateway key: deliveries need the delivery key" in " ".join(result.stderr.split())


def test_the_gateway_will_not_start_with_a_demo_key_outside_the_dev_stack() -> None:
    result = CliRunner().invoke(
        app,
        ["--bootstrap", "127.0.0.1:9", "connect", "gateway"],
        env={
            "GOVESB_SIGNING_KEY_FILE": str(DEMO_GATEWAY_KEY),
            "GOVESB_SIGNING_KEY_ID": DEMO_GATEWAY_KEY_ID,
            "GOVESB_CLIENTS__RITA": "rita-gateway-secret-0001",
            "GOVESB_ALLOW_DEMO_KEYS": None,
        },
    )
    assert result.exit_code == 2
    assert "ega-811cb62f3e2d is a published demo key" in " ".join(result.stderr.split())
