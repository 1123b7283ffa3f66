"""What the SDK's clients share: ``start``/``stop``, and ``async with`` doing both."""

from __future__ import annotations

from typing import Self


class Lifecycle:
    """A client that connects in :meth:`start` and closes in :meth:`stop`;
    ``async with client:`` does both."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
