"""What the gateway answers when it refuses a request: status, code, message."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class HttpError(Exception):
    """A refusal with its status, error code and message (and optional field path).

    ``event_id`` is the id of an event that may have reached the bus anyway (the broker did
    not acknowledge in time): a client resending with it is de-duplicated on that id.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: int | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.retry_after, self.event_id = field, retry_after, event_id

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        if self.event_id:
            body["id"] = self.event_id
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return web.json_response(body, status=self.status, headers=headers)
