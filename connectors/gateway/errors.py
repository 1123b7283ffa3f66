"""What the gateway answers when it refuses a request: status, code, message."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class HttpError(Exception):
    """A refusal with its status, error code and message (and optional field path)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.retry_after = field, retry_after

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return web.json_response(body, status=self.status, headers=headers)
