"""HTTP/1.1 requests written byte for byte: header values that no HTTP client library sends.

aiohttp's client refuses header values that are not UTF-8 text, but a legacy system (or an
attacker) can send any bytes; the gateway must answer those too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from tests.corpus.malformed import GatewayRequest


@dataclass(frozen=True)
class RawResponse:
    """Status, headers (lower-case names) and body of a response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def request_bytes(request: GatewayRequest, authorization: str | bytes | None) -> bytes:
    """The whole request, as it goes on the wire (``Connection: close``)."""
    lines = [f"POST {request.path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    if request.content_type is not None:
        lines.append(b"Content-Type: " + _bytes(request.content_type))
    if authorization:
        lines.append(b"Authorization: " + _bytes(authorization))
    lines += [_bytes(name) + b": " + _bytes(value) for name, value in request.headers]
    if request.chunked:
        lines.append(b"Transfer-Encoding: chunked")
        size = 4096
        chunks = [request.body[i : i + size] for i in range(0, len(request.body), size)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(request.body))
        body = request.body
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send(
    port: int,
    request: GatewayRequest,
    authorization: str | bytes | None,
    timeout_s: float = 15.0,
) -> RawResponse:
    """Send ``request`` to ``127.0.0.1:port`` and read the whole response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(request, authorization))
        with contextlib.suppress(ConnectionError):  # answered (413) before reading it all
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(int(status_line.split()[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out
