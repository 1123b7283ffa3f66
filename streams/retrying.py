"""Waiting out a dependency that is down: one backoff loop for every process of the bus."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until_available(
    call: Callable[[], Awaitable[T]],
    transient: type[BaseException] | tuple[type[BaseException], ...],
    what: str,
    log: logging.Logger,
    *,
    first_s: float = 0.5,
    max_s: float = 10.0,
) -> T:
    """``await call()`` until it does not raise ``transient``, doubling the wait up to ``max_s``.

    Only for failures that end by themselves (a registry restarting, a broker electing a
    leader): anything else ``call`` raises goes to the caller at once. ``what`` names the
    dependency in the warning logged before each wait.
    """
    delay = first_s
    while True:
        try:
            return await call()
        except transient as error:
            log.warning("%s unavailable (%s); retrying in %.1fs", what, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)
