"""The lean transport's HTTP/1.1 client: POST a JSON body on a keep-alive pool, read the answer.

Why not aiohttp (or httpx, or httpcore): against a fast self-hosted server the client's CPU per
call is the throughput limit, and a general client spends most of it on what an LLM call never
needs (cookies, redirects, URL objects, middleware, a stream-reader stack per response). This
one does one thing: it writes each request with a single ``transport.write`` of a head built
once per path plus the body, and parses the answer in an :class:`asyncio.Protocol`'s
``data_received``, waking the caller once per response (once per arriving piece for a stream).
``bench/bench_transport.py`` measures it against aiohttp and a raw asyncio client.

What it speaks:

- ``http`` and ``https`` (asyncio's TLS with :func:`ssl.create_default_context`); a base URL's
  path prefix (``http://host:8000/v1``) and query are kept.
- a response's status line and headers (names lower-cased; repeated ones joined with ``, ``),
  1xx interim responses skipped, bodies by ``Content-Length``, ``Transfer-Encoding: chunked``
  (extensions and trailers ignored) or the connection's close. Requests say
  ``Accept-Encoding: identity``: bodies are small JSON or SSE, and compressing a stream
  would hold its events back, so there is no decompression.
- one keep-alive pool per client, at most ``pool_size`` connections; idle ones are reused
  newest first (LIFO: the warmest, the least likely to have been closed by the server). A
  connection the server closed, or whose response said ``Connection: close``, was
  close-delimited or malformed, is dropped. A request on a reused connection that fails
  before any byte of its response arrived is sent once more on a new connection: the server
  closed the idle connection as the request went out (the keep-alive race). Any other failure
  is the caller's to retry.
- a total deadline per request (pool wait, connect, send, the whole response), or for a
  stream a deadline to get a connection and none after. A cancelled or abandoned request
  closes its connection at once; it never goes back to the pool.

Every failure is an :class:`HTTPError`; messages name the failure, never a header (the
credential travels in them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ssl
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlencode, urlsplit

__all__ = ["BadResponse", "ConnectFailed", "ConnectionLost", "HTTPClient", "HTTPError", "Response", "Timeout"]

_MAX_HEAD = 64 * 1024  # a response head larger than this is not a server we can talk to
_PAUSE, _RESUME = 256 * 1024, 64 * 1024  # a stream's unread bytes: stop and restart reading the socket

# A connection's read state.
_IDLE, _HEAD, _LENGTH, _UNTIL_CLOSE, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _DONE = range(9)


class HTTPError(Exception):
    """No complete response came."""


class ConnectFailed(HTTPError):
    """No connection could be opened (refused, unresolvable, TLS handshake failed)."""


class Timeout(HTTPError):
    """The request's deadline passed."""


class BadResponse(HTTPError):
    """What came back is not an HTTP/1.x response."""


class ConnectionLost(HTTPError):
    """The connection closed or broke before the response was complete.

    ``cut``: the head had arrived, so it is the body that was cut short. ``stale``: the
    connection had served a response before and nothing of this one arrived (the keep-alive
    race: safe to send again, once, on a new connection).
    """

    def __init__(self, message: str, *, cut: bool = False, stale: bool = False) -> None:
        super().__init__(message)
        self.cut, self.stale = cut, stale


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # loading the CA store takes milliseconds: once per process


class Response:
    """A response's ``status`` and ``headers`` (names lower-case); ``body`` when read whole
    (:meth:`HTTPClient.post`), else read it with :meth:`read_chunk` and then :meth:`close`."""

    __slots__ = ("_client", "_conn", "body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes | None = None,
                 conn: _Connection | None = None, client: HTTPClient | None = None) -> None:  # fmt: skip
        self.status, self.headers, self.body = status, headers, body
        self._conn, self._client = conn, client

    async def read_chunk(self) -> bytes:
        """The next piece of the body as it arrived; ``b""`` at its end."""
        return await self._conn.read_chunk() if self._conn is not None else b""

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Done with it: a connection read to the end goes back to the pool, any other closes."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses its response as bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_idle_lost: Callable[[_Connection], None]) -> None:
        self._loop, self._on_idle_lost = loop, on_idle_lost
        self.transport: asyncio.Transport | None = None
        self.idle = False  # in the pool's idle list
        self.closed = False
        self.served = False  # a response was read on it: the keep-alive race can hit it
        self.keep_alive = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self._state = _IDLE
        self._buffer = b""
        self._remaining = 0
        self._started = False  # a byte of the current response arrived
        self._stream = False
        self._parts: list[bytes] = []  # the body so far (read whole)
        self._chunks: collections.deque[bytes] = collections.deque()  # arrived, unread (streamed)
        self._queued = 0
        self._paused = False
        self._error: HTTPError | None = None
        self._waiter: asyncio.Future | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def reusable(self) -> bool:
        return self._state == _DONE and self.keep_alive and not self.closed

    # -- the caller's side ---------------------------------------------------------------------

    def send(self, message: bytes, deadline: float | None, stream: bool) -> asyncio.Future:
        """Write a request; the future resolves once the head (``stream``) or the whole body arrived."""
        if self.closed:  # lost while being handed from one request to the next
            raise ConnectionLost("the connection was closed", stale=self.served)
        self._state, self._stream, self._started, self._error = _HEAD, stream, False, None
        if self._chunks:  # a stream closed unread but complete: its rest is not this response's
            self._chunks.clear()
            self._queued = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._waiter = waiter = self._loop.create_future()
        if deadline is not None:
            self._arm(deadline)
        self.transport.write(message)
        return waiter

    async def read_chunk(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise self._error
            if self._state == _DONE:
                return b""
            if self.closed:
                raise ConnectionLost("the connection was closed", cut=True)
            self._waiter = waiter = self._loop.create_future()
            await waiter
        chunk = chunks.popleft()
        self._queued -= len(chunk)
        if self._paused and self._queued <= _RESUME:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def abort(self) -> None:
        """Close now, whatever its state; the caller accounts for it."""
        if not self.closed:
            self.closed, self.keep_alive = True, False
            self._cancel_timer()
            self.transport.abort()

    # -- the deadline: one timer per connection, moved only when a deadline comes sooner --------

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, deadline = None, self._deadline
        if deadline is None or self.closed or self._state in (_IDLE, _DONE):
            return
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
        else:
            self._fail(Timeout("request timed out"))

    def _cancel_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the protocol's side -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:  # closed by us: accounted for already
            return
        self.closed, self.keep_alive = True, False
        self._cancel_timer()
        state = self._state
        if state == _UNTIL_CLOSE:
            self._finish()
        elif state in (_IDLE, _DONE):
            if self.idle:
                self._on_idle_lost(self)
        else:
            what = "the connection closed" if exc is None else f"the connection broke ({type(exc).__name__})"
            self._fail(ConnectionLost(
                f"{what} before the response was complete", cut=state != _HEAD,
                stale=self.served and not self._started,
            ))  # fmt: skip

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        self._started = True
        state = self._state
        while data:
            if state in (_LENGTH, _CHUNK_DATA):
                remaining = self._remaining
                if len(data) <= remaining:
                    piece, data = data, b""
                else:
                    piece, data = data[:remaining], data[remaining:]
                self._remaining = remaining = remaining - len(piece)
                self._deliver(piece)
                if not remaining:
                    if state == _LENGTH:
                        state = self._finish()
                    else:
                        state = self._state = _CHUNK_END
            elif state == _HEAD:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > _MAX_HEAD:
                        return self._fail(BadResponse("the response head is too large"))
                    self._buffer = data
                    return
                try:
                    state = self._read_head(data[:end])
                except BadResponse as exc:
                    return self._fail(exc)
                data = data[end + 4 :]
            elif state == _UNTIL_CLOSE:
                self._deliver(data)
                return
            elif state in (_CHUNK_SIZE, _TRAILER):
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > _MAX_HEAD:
                        return self._fail(BadResponse("a chunk header is too large"))
                    self._buffer = data
                    return
                line, data = data[:end], data[end + 2 :]
                if state == _TRAILER:
                    if not line:
                        state = self._finish()
                    continue
                try:
                    size = int(line.partition(b";")[0], 16)
                except ValueError:
                    size = -1
                if size < 0:
                    return self._fail(BadResponse("a chunk size is not a hexadecimal number"))
                self._remaining = size
                state = self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_END:
                if len(data) < 2:
                    self._buffer = data
                    return
                if data[:2] != b"\r\n":
                    return self._fail(BadResponse("a chunk is longer than its size"))
                data = data[2:]
                state = self._state = _CHUNK_SIZE
            else:  # bytes nobody asked for (idle, or after a complete response): not HTTP we can trust
                self.keep_alive = False
                if state == _IDLE:
                    self.abort()
                    if self.idle:
                        self._on_idle_lost(self)
                return

    # -- parsing -------------------------------------------------------------------------------

    def _read_head(self, head: bytes) -> int:
        """Status and headers from ``head``; the state that reads the body (or more heads after a 1xx)."""
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not (_is_number(code) and rest[3:4] in ("", " ")):
            raise BadResponse("the response does not start with an HTTP/1.x status line")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name[-1] in " \t" or name[0] in " \t":
                raise BadResponse("a response header line is malformed")
            name, value = name.lower(), value.strip(" \t")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:
            if status == 101:
                raise BadResponse("the server switched protocols")
            return _HEAD  # an interim response (100 Continue, 103 Early Hints): the real one follows
        self.status, self.headers = status, headers
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        state = self._body_state(status, headers)
        if self._stream:
            self._wake()  # the head is in: :meth:`HTTPClient.open` returns
        if state == _DONE:
            return self._finish()
        self._state = state
        return state

    def _body_state(self, status: int, headers: dict[str, str]) -> int:
        """How the body is delimited (RFC 9112 6.3); a body the connection's close ends, or a
        length and a chunking both given, leave the connection unfit for reuse."""
        encoding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in (204, 304):
            return _DONE
        if encoding is not None:
            if length is not None:
                self.keep_alive = False
            if encoding.lower().rpartition(",")[2].strip() == "chunked":
                return _CHUNK_SIZE
            self.keep_alive = False
            return _UNTIL_CLOSE
        if length is not None:
            first = length.partition(",")[0].strip()
            if not _is_number(first) or any(part.strip() != first for part in length.split(",")):
                raise BadResponse("the response's Content-Length is not a number")
            self._remaining = int(first)
            return _LENGTH if self._remaining else _DONE
        self.keep_alive = False
        return _UNTIL_CLOSE

    def _deliver(self, piece: bytes) -> None:
        if not self._stream:
            self._parts.append(piece)
            return
        self._chunks.append(piece)
        self._queued += len(piece)
        if not self._paused and self._queued > _PAUSE and not self.closed:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish(self) -> int:
        self._state = _DONE
        self._deadline = None
        if self._stream:
            self._wake()
        else:
            parts, self._parts = self._parts, []
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(b"".join(parts))
        return _DONE

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HTTPError) -> None:
        self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.abort()


class HTTPClient:
    """A keep-alive pool of at most ``pool_size`` connections to the server of ``base_url``.

    ``headers`` go with every request (the credential among them: never in a message or repr).
    Used on one event loop at a time: a request on another one starts the pool afresh.
    """

    def __init__(
        self, base_url: str, headers: Mapping[str, str], *, query: Mapping[str, str] | None = None, pool_size: int = 64
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the base URL must be http(s)://host[:port][/path], got scheme {parts.scheme!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        target_query = "&".join(filter(None, (parts.query, urlencode(dict(query or {})))))
        self._prefix, self._suffix = parts.path.rstrip("/"), f"?{target_query}" if target_query else ""
        self._headers = {"host": parts.netloc.rpartition("@")[2], **{k.lower(): v for k, v in headers.items()},
                         "accept-encoding": "identity"}  # fmt: skip
        self._heads: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        self._size = max(1, int(pool_size))
        self._open = 0  # connections open or opening, each holding one of the ``_size`` slots
        self._idle: list[_Connection] = []
        self._conns: set[_Connection] = set()
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"HTTPClient({scheme}://{self._host}:{self._port}{self._prefix}, pool_size={self._size})"

    @property
    def pool_size(self) -> int:
        return self._size

    def _head(self, path: str, headers: tuple[tuple[str, str], ...]) -> bytes:
        """The request up to the Content-Length value, built once per path and extra headers."""
        head = self._heads.get((path, headers))
        if head is None:
            fields = {**self._headers, **{k.lower(): v for k, v in headers}}
            lines = [f"POST {self._prefix}{path}{self._suffix} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
            if any("\r" in line or "\n" in line for line in lines):
                raise ValueError("a request header or the path contains a line break")
            try:
                head = ("\r\n".join(lines) + "\r\ncontent-length: ").encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("a request header or the path is not latin-1 text") from None
            self._heads[(path, headers)] = head
        return head

    async def post(
        self, path: str, body: bytes, *, headers: tuple[tuple[str, str], ...] = (), timeout: float | None = None
    ) -> Response:
        """POST ``body`` to the base URL's path + ``path``; the whole response, within ``timeout`` seconds."""
        conn, data = await self._send(path, body, headers, self._deadline(timeout), stream=False)
        response = Response(conn.status, conn.headers, data)
        self._release(conn)
        return response

    async def open(
        self, path: str, body: bytes, *, headers: tuple[tuple[str, str], ...] = (), connect_timeout: float | None = None
    ) -> Response:
        """POST ``body`` and return once the response head arrived; read the body off the
        :class:`Response`, then close it. Only getting a connection is bounded in time."""
        conn, _ = await self._send(path, body, headers, self._deadline(connect_timeout), stream=True)
        return Response(conn.status, conn.headers, conn=conn, client=self)

    def _deadline(self, seconds: float | None) -> float | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop (another asyncio.run): the old one's sockets are no use
            self._close_all(list(self._conns))
            self._loop = loop
        return loop.time() + seconds if seconds else None

    async def _send(
        self, path: str, body: bytes, headers: tuple[tuple[str, str], ...], deadline: float | None, *, stream: bool
    ) -> tuple[_Connection, bytes | None]:
        """Send on a pooled connection (once more on a new one after the keep-alive race); the
        connection and its response: the whole body, or None once a stream's head is in."""
        message = b"%s%d\r\n\r\n%s" % (self._head(path, headers), len(body), body)
        conn = self._idle.pop() if self._idle else await self._acquire(deadline)
        conn.idle = False
        while True:
            try:
                return conn, await conn.send(message, None if stream else deadline, stream)
            except ConnectionLost as exc:
                conn = await self._replace(conn, exc, deadline)
            except BaseException:  # cancelled, timed out, malformed: never reused
                self._discard(conn)
                raise

    # -- the pool ------------------------------------------------------------------------------

    async def _acquire(self, deadline: float | None) -> _Connection:
        """An idle connection, else a new one in a free slot, else the first one released."""
        if self._idle:
            return self._idle.pop()
        if self._open < self._size:
            self._open += 1
            return await self._connect(deadline)
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                conn = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # handed over just as we gave up: pass it on
                self._pass_on(waiter.result())
            if isinstance(exc, TimeoutError):
                raise Timeout("timed out waiting for a free connection") from None
            raise
        return conn if conn is not None else await self._connect(deadline)

    async def _connect(self, deadline: float | None) -> _Connection:
        """A new connection in a slot already counted in ``_open``; the slot is freed if it fails."""
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await self._loop.create_connection(
                    lambda: _Connection(self._loop, self._idle_lost), self._host, self._port,
                    ssl=_tls_context() if self._tls else None, server_hostname=self._host if self._tls else None,
                )  # fmt: skip
        except BaseException as exc:
            self._free_slot()
            if isinstance(exc, TimeoutError):
                raise Timeout("timed out connecting") from None
            if isinstance(exc, OSError):
                raise ConnectFailed(f"could not connect ({type(exc).__name__})") from None
            raise
        self._conns.add(conn)
        return conn

    async def _replace(self, conn: _Connection, lost: ConnectionLost, deadline: float | None) -> _Connection:
        """After ``lost`` on ``conn``: a new connection in its slot if it was the keep-alive
        race, else ``lost`` re-raised."""
        if not lost.stale:  # a new connection is never stale: so this happens once per request
            self._discard(conn)
            raise lost
        self._conns.discard(conn)  # its slot passes to the new connection
        return await self._connect(deadline)

    def _release(self, conn: _Connection) -> None:
        """Done with ``conn``: back to the pool if it can serve another request, else closed."""
        if not conn.reusable:
            self._discard(conn)
            return
        conn.served = True
        self._pass_on(conn)

    def _pass_on(self, conn: _Connection | None) -> None:
        """Give a reusable ``conn`` (or, with None, a free slot) to the first waiter, else keep it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is None:
            self._open -= 1
        else:
            conn.idle = True
            self._idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.abort()
        if conn in self._conns:
            self._conns.discard(conn)
            self._free_slot()

    def _free_slot(self) -> None:
        self._pass_on(None)

    def _idle_lost(self, conn: _Connection) -> None:
        """The server closed an idle connection: out of the pool."""
        conn.idle = False
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._discard(conn)

    def close(self) -> None:
        """Close every connection now, idle or in use (a request in flight fails with
        :class:`ConnectionLost`). Safe from any thread, and once the loop is gone."""
        conns = list(self._conns)
        if not conns:
            return
        loop = self._loop
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if loop is not None and not here and loop.is_running():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(self._close_all, conns)
            return
        self._close_all(conns)

    def _close_all(self, conns: Iterable[_Connection]) -> None:
        for conn in conns:
            if conn.idle:
                conn.idle = False
                with contextlib.suppress(ValueError):
                    self._idle.remove(conn)
            with contextlib.suppress(RuntimeError):  # the loop is closed: the socket closes with the process
                if conn.closed or conn._state in (_IDLE, _DONE):
                    conn.abort()
                else:
                    conn._fail(ConnectionLost("the client was closed"))
            if conn in self._conns:
                self._conns.discard(conn)
                self._free_slot()

    async def aclose(self) -> None:
        """Close every connection; the client stays usable (a later request opens new ones)."""
        self._close_all(list(self._conns))
