"""The small slice of HTTP/1.1 the loopback server speaks.

Hand-rolled on asyncio streams rather than ``http.server`` or aiohttp: keep-alive,
``Content-Length`` request bodies, and one ``write`` per response. That is all the provider
SDKs need, and it keeps the server's CPU per request far below that of the client it is
measured against (both share the same small machine in our benchmarks).
"""

from __future__ import annotations

import asyncio
import dataclasses
from http import HTTPStatus

_HEAD_END = b"\r\n\r\n"


class HttpError(Exception):
    """A request we cannot read; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    keep_alive: bool


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """The next request on a connection, or None once the client has closed it."""
    try:
        head = await reader.readuntil(_HEAD_END)
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    lines = head[: -len(_HEAD_END)].decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise HttpError(400, f"malformed request line {lines[0]!r:.80}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked request bodies are not supported; send Content-Length")
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise HttpError(400, f"invalid Content-Length {length!r:.20}")
    length = int(length)
    body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return HttpRequest(method, target.partition("?")[0], headers, body, keep_alive)


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """A whole response; ``events`` makes it a chunked stream, one chunk per SSE event."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    events: tuple[bytes, ...] | None = None

    def encode(self, keep_alive: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_reason(self.status)}",
            f"content-type: {self.content_type}",
            "connection: keep-alive" if keep_alive else "connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.events is None:
            lines.append(f"content-length: {len(self.body)}")
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body
        lines.append("transfer-encoding: chunked")
        chunks = [b"%x\r\n%s\r\n" % (len(event), event) for event in self.events]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + b"".join(chunks) + b"0\r\n\r\n"

    def encode_parts(self, keep_alive: bool) -> tuple[bytes, ...]:
        """A stream's :meth:`encode` split: head, one chunk per event, then the terminating chunk."""
        whole = self.encode(keep_alive)
        head_end = whole.index(_HEAD_END) + len(_HEAD_END)
        chunks = tuple(b"%x\r\n%s\r\n" % (len(event), event) for event in self.events or ())
        return (whole[:head_end], *chunks, b"0\r\n\r\n")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"
