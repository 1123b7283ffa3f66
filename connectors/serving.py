"""The life of a connector process: serve HTTP until SIGTERM or SIGINT, then stop in order."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from aiohttp import web


def stop_requested() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets (the process's cue to stop cleanly)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    return stopping


async def serve(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False, **options: Any
) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; ``options`` go to the ``AppRunner``. Clean it up after.

    ``reuse_port``: bind with ``SO_REUSEPORT``, so that several processes listen on one port
    and the kernel spreads the connections among them.
    """
    runner = web.AppRunner(app, **options)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    return runner
