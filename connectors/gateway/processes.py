"""``govesb connect gateway --processes N``: N gateway processes behind one port.

Each child is a whole gateway (its own producer, registry view, reply reader) listening on the
shared ``web_port`` with ``SO_REUSEPORT``: the kernel hands each new connection to one of them
(by a hash of its addresses), so a keep-alive connection stays with one process and many
connections spread over all. Supervision is :class:`streams.supervising.Supervisor`'s: a child
that dies is started again after a backoff, its siblings answer on the port meanwhile; SIGTERM
stops them all, each draining like a single gateway. The command refuses to start (exit 2) on
a port another program listens on: ``SO_REUSEPORT`` would otherwise let a second command share
it silently.

Child ``i`` also serves its own ``/health`` and ``/metrics`` on ``web_port + 1 + i``, so that
Prometheus scrapes every process; ``/health`` on the shared port answers for whichever process
took the connection, and both have a ``process`` check (pid, index, N, restarts).

What each process keeps to itself, and what that means with N of them:

- access tokens: none kept. A token is checked by its HMAC under one key (``token_key``, or
  one the command makes at start and hands to its children with their settings), so every
  process accepts every token; ``govesb_gateway_live_tokens`` counts what each issued (sum
  them for the gateway's);
- per-institution rate limits and the token endpoint's limits (failures per client and per
  address, tokens per client) are counted per process: across N processes an institution gets
  at most N times ``rate_per_s`` (and ``burst``), an attacker at most N times the failures;
- the GovESB push replay window: a replayed push that lands on another process is accepted
  there once more (at most N times in all), with the same event id, which the pipeline's
  duplicate window refuses bus-wide as ``duplicate``: nothing is delivered twice;
- held GovESB requests: each process reads every reply topic from the end and answers only
  the calls it holds, so an answer reaches the process holding its call wherever it is.
"""

from __future__ import annotations

import asyncio
import secrets
import socket

from pydantic import SecretStr

from connectors.gateway.runner import admin_port
from connectors.settings import GatewaySettings
from streams.supervising import ProcessSlot, Supervisor

HTTP_DRAIN_S = 60.0  # aiohttp's AppRunner waits this long for the requests in flight


def child_settings(settings: GatewaySettings, token_key: SecretStr) -> GatewaySettings:
    """A child's settings: the parent's, with the token key every child shares."""
    return settings.model_copy(update={"token_key": settings.token_key or token_key})


def busy_port(settings: GatewaySettings, processes: int) -> int | None:
    """The first of the command's ports (the shared one, then each process's own) that another
    program listens on, or None.

    ``SO_REUSEPORT`` would let a second command share the port silently (each taking part of
    the connections, with other clients and keys): a bind without it fails instead if anything
    listens there.
    """
    ports = [settings.web_port, *(admin_port(settings, i) for i in range(processes))]
    for port in ports:
        try:
            family, kind, _, _, address = socket.getaddrinfo(
                settings.web_host, port, type=socket.SOCK_STREAM
            )[0]
        except OSError:
            return None  # an address the processes cannot bind either: they say so
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no use
            try:
                probe.bind(address)
            except OSError:
                return port
    return None


def _gateway_main(settings: GatewaySettings, slot: ProcessSlot) -> None:
    from connectors.gateway.runner import run_gateway

    asyncio.run(run_gateway(settings, slot))


def supervise(settings: GatewaySettings, processes: int) -> int:
    """Run ``processes`` gateways on ``settings.web_port`` until SIGTERM; the exit code."""
    shared = child_settings(settings, SecretStr(secrets.token_urlsafe(32)))

    def settings_of(index: int) -> tuple[GatewaySettings, str]:
        where = (
            f"port {settings.web_port} shared, /health and /metrics on port "
            f"{admin_port(settings, index)}"
        )
        return shared, where

    supervisor = Supervisor(
        _gateway_main, settings_of, processes, name="gateway",
        shutdown_timeout_s=HTTP_DRAIN_S + settings.produce_timeout_s,
    )  # fmt: skip
    return supervisor.run()
