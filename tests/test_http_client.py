"""The lean transport's HTTP/1.1 client against scripted servers on real 127.0.0.1 sockets.

Each test starts an asyncio server whose answer to every request is a function of the
request; the server counts connections, so keep-alive reuse, the pool bound, the stale
keep-alive retry and closing on cancellation are checked by what the server saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
import shutil
import ssl
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.models import ProviderConnectionError, ProviderTimeoutError, RateLimitError
from ember.models.providers import _http
from ember.models.providers._lean import LeanClient

OK_BODY = b'{"answer": 4}'


def ok(body: bytes = OK_BODY, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)  # fmt: skip


def chunked(*pieces: bytes, extra: bytes = b"") -> list[bytes]:
    """A chunked 200, one write per chunk (the last with an extension and a trailer)."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n%s\r\n" % extra
    return [head, *(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces), b"0;end=1\r\nx-trailer: yes\r\n\r\n"]


@dataclasses.dataclass
class Exchange:
    index: int  # of the request, over all connections
    connection: int
    head: bytes
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class Scripted:
    """An HTTP/1.1 server; ``reply(exchange)`` (sync or async) answers each request with bytes,
    a list of writes (a short pause between them), or None to close the connection unanswered."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.exchanges: list[Exchange] = []
        self.connections = self.open = self.most_open = 0
        self.client_closed = 0  # connections the client closed

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number, self.connections, self.open = self.connections, self.connections + 1, self.open + 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.client_closed += 1
                    return
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
                exchange = Exchange(len(self.exchanges), number, head, await reader.readexactly(length), reader, writer)
                self.exchanges.append(exchange)
                out = self.reply(exchange)
                out = await out if inspect.isawaitable(out) else out
                if out is None:
                    return
                for i, part in enumerate(out if isinstance(out, list) else [out]):
                    if i:
                        await asyncio.sleep(0.01)
                    writer.write(part)
                    await writer.drain()
        except ConnectionError:
            self.client_closed += 1
        finally:
            self.open -= 1
            writer.close()


def run(main, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(main(), timeout))


def client(server: Scripted, **kwargs) -> _http.HTTPClient:
    return _http.HTTPClient(server.url + "/v1", {"authorization": "Bearer sk-test-secret"}, **kwargs)


def test_content_length_and_chunked_bodies_and_the_request_on_the_wire():
    replies = [ok(), chunked(b'{"ans', b'wer": ', b"4}"), [ok()[:20], ok()[20:50], ok()[50:]]]

    async def main():
        async with Scripted(lambda ex: replies[ex.index]) as server:
            http = client(server, query={"api-version": "7"})
            for _ in replies:
                response = await http.post("/chat/completions", b'{"q": 1}', timeout=5)
                assert (response.status, response.body) == (200, OK_BODY)
            await http.aclose()
            return server

    server = run(main)
    head = server.exchanges[0].head.decode().lower()
    assert head.startswith("post /v1/chat/completions?api-version=7 http/1.1\r\n")
    for line in ("host: 127.0.0.1:", "authorization: bearer sk-test-secret", "content-length: 8",
                 "accept-encoding: identity"):  # fmt: skip
        assert line in head
    assert server.exchanges[0].body == b'{"q": 1}'


def test_headers_are_case_insensitive_and_a_1xx_is_skipped():
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    reply = interim + ok(extra=b"Retry-After: 3\r\nX-Many: a\r\nx-many: b\r\n")

    async def main():
        async with Scripted(lambda ex: reply) as server:
            http = client(server)
            response = await http.post("/x", b"{}")
            await http.aclose()
            return response

    response = run(main)
    assert response.body == OK_BODY and response.headers["retry-after"] == "3"
    assert response.headers["x-many"] == "a, b"


def test_sequential_requests_reuse_one_connection():
    async def main():
        async with Scripted(lambda ex: ok()) as server:
            http = client(server)
            for _ in range(10):
                assert (await http.post("/x", b"{}")).body == OK_BODY
            await http.aclose()
            await asyncio.sleep(0.05)
            return server

    server = run(main)
    assert server.connections == 1 and len(server.exchanges) == 10
    assert server.client_closed == 1  # aclose closed it


def test_a_burst_opens_at_most_pool_size_connections():
    async def slow(ex):
        await asyncio.sleep(0.02)
        return ok()

    async def main():
        async with Scripted(slow) as server:
            http = client(server, pool_size=3)
            bodies = await asyncio.gather(*(http.post("/x", b"{}", timeout=10) for _ in range(30)))
            assert all(r.body == OK_BODY for r in bodies)
            await http.aclose()
            return server

    server = run(main)
    assert server.connections == 3 and server.most_open == 3 and len(server.exchanges) == 30


def test_an_idle_connection_the_server_closed_is_replaced():
    async def main():
        async with Scripted(lambda ex: ok()) as server:
            http = client(server)
            assert (await http.post("/x", b"{}")).body == OK_BODY
            server.exchanges[0].writer.close()  # the server hangs up on the idle connection (a keep-alive timeout)
            await asyncio.sleep(0.05)
            assert (await http.post("/x", b"{}")).body == OK_BODY
            await http.aclose()
            return server

    server = run(main)
    assert server.connections == 2 and [ex.connection for ex in server.exchanges] == [0, 1]


def test_a_client_used_on_a_second_event_loop_starts_afresh():
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def answer(conn: socket.socket) -> None:
        while conn.recv(65536):  # one small request per read
            conn.sendall(ok())

    def serve():  # in threads: outlives each event loop
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    http = _http.HTTPClient(f"http://127.0.0.1:{listener.getsockname()[1]}", {})
    try:
        for _ in range(2):
            assert asyncio.run(http.post("/x", b"{}", timeout=5)).body == OK_BODY
    finally:
        listener.close()
    assert len(accepted) == 2


def test_a_pooled_connection_closed_before_its_next_request_is_replaced():
    """A connection lost between two requests (here closed under the pool's feet) is not written to."""

    async def main():
        async with Scripted(lambda ex: ok()) as server:
            http = client(server)
            await http.post("/x", b"{}")
            http._idle[-1].abort()
            assert (await http.post("/x", b"{}", timeout=2)).body == OK_BODY
            await http.aclose()
            return server

    assert run(main).connections == 2


def test_the_keep_alive_race_is_retried_once_on_a_new_connection():
    """The server reads a request on a reused connection and hangs up without a byte of answer
    (as one that closed the idle connection just as the request went out): sent again, once."""

    async def main(drop_new: bool):
        def reply(ex):
            if ex.index == 0:
                return ok()
            if ex.connection == 0 or drop_new:
                return None  # hang up, unanswered
            return ok()

        async with Scripted(reply) as server:
            http = client(server)
            await http.post("/x", b"{}")
            try:
                return (await http.post("/x", b"{}")).body, server
            except _http.ConnectionLost as lost:
                return lost, server
            finally:
                await http.aclose()

    body, server = run(lambda: main(drop_new=False))
    assert body == OK_BODY and server.connections == 2
    assert [ex.connection for ex in server.exchanges] == [0, 0, 1]
    lost, server = run(lambda: main(drop_new=True))  # the new connection fails too: raised, not retried again
    assert isinstance(lost, _http.ConnectionLost) and not lost.cut and not lost.stale
    assert len(server.exchanges) == 3


def test_a_failure_on_a_new_connection_is_never_retried_silently():
    async def main():
        async with Scripted(lambda ex: None) as server:
            http = client(server)
            with pytest.raises(_http.ConnectionLost) as err:
                await http.post("/x", b"{}")
            await http.aclose()
            return err.value, server

    lost, server = run(main)
    assert len(server.exchanges) == 1 and not lost.stale


def test_a_connection_close_answer_is_not_reused():
    """The server says ``Connection: close`` but keeps the socket open: the client closes it."""
    replies = [ok(extra=b"Connection: close\r\n"), ok(), ok()]

    async def main():
        async with Scripted(lambda ex: replies[ex.index]) as server:
            http = client(server)
            for _ in replies:
                assert (await http.post("/x", b"{}")).body == OK_BODY
            await http.aclose()
            return server

    server = run(main)
    assert [ex.connection for ex in server.exchanges] == [0, 1, 1]


def test_a_close_delimited_body_is_read_to_the_end():
    async def main():
        async def reply(ex):
            ex.writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + OK_BODY)
            ex.writer.close()
            return None

        async with Scripted(reply) as server:
            http = client(server)
            first = await http.post("/x", b"{}")
            second = await http.post("/x", b"{}")
            await http.aclose()
            return first, second, server

    first, second, server = run(main)
    assert first.body == second.body == OK_BODY and server.connections == 2


@pytest.mark.parametrize(
    ("reply", "cut"),
    [
        (ok()[:-3], True),  # fewer bytes than Content-Length
        (b"".join(chunked(b"abc", b"def")[:2]), True),  # chunked, never terminated
        (b"HTTP/1.1 200 OK\r\ncontent-le", False),  # dropped mid-headers
    ],
    ids=["content-length", "chunked", "mid-headers"],
)
def test_a_response_cut_short_is_a_typed_retryable_error(reply, cut):
    def answer(ex):
        ex.writer.write(reply)
        ex.writer.close()

    async def main():
        async with Scripted(answer) as server:
            http = client(server)
            with pytest.raises(_http.ConnectionLost) as err:
                await http.post("/x", b"{}")
            lean = LeanClient(server.url, {"authorization": "Bearer sk-test-secret"})
            with pytest.raises(ProviderConnectionError) as typed:
                await lean.post("/x", {}, model_id="m:x")
            await http.aclose()
            await lean.aclose()
            return err.value, typed.value

    lost, typed = run(main)
    assert lost.cut == cut and typed.retryable
    assert ("cut short" in str(typed)) == cut and "sk-test-secret" not in str(typed) + repr(typed)


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/2 200 OK\r\n\r\n", b"SSH-2.0-OpenSSH\r\n\r\n", ok().replace(b"content-length: 13", b"content-length: x"),
     b"".join(chunked(b"abc")).replace(b"3\r\n", b"zz\r\n")],
    ids=["version", "not-http", "bad-length", "bad-chunk-size"],
)
def test_a_malformed_response_is_an_error_and_the_connection_is_dropped(reply):
    async def main():
        async with Scripted(lambda ex: reply if ex.index == 0 else ok()) as server:
            http = client(server)
            with pytest.raises(_http.BadResponse):
                await http.post("/x", b"{}")
            assert (await http.post("/x", b"{}")).body == OK_BODY
            await http.aclose()
            return server

    assert run(main).connections == 2


def test_cancellation_closes_the_connection_and_frees_its_slot():
    async def main():
        saw_close = asyncio.Event()

        async def reply(ex):
            if ex.index == 0:
                if await ex.reader.read(1) == b"":  # the client hung up mid-request
                    saw_close.set()
                return None
            return ok()

        async with Scripted(reply) as server:
            http = client(server, pool_size=1)
            task = asyncio.create_task(http.post("/x", b"{}"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(saw_close.wait(), 2)
            assert (await http.post("/x", b"{}", timeout=2)).body == OK_BODY  # the one slot is free again
            await http.aclose()
            return server

    server = run(main)
    assert server.connections == 2


def test_the_total_timeout_covers_a_slow_answer():
    async def main():
        async def reply(ex):
            await asyncio.sleep(10 if ex.index == 0 else 0)
            return ok()

        async with Scripted(reply) as server:
            http = client(server)
            start = time.monotonic()
            with pytest.raises(_http.Timeout):
                await http.post("/x", b"{}", timeout=0.2)
            elapsed = time.monotonic() - start
            lean = LeanClient(server.url, {}, timeout=5)
            assert await lean.post("/x", {}, model_id="m:x") == OK_BODY
            await lean.aclose()
            await http.aclose()
            return elapsed

    assert 0.15 <= run(main) < 2


def test_a_timeout_while_the_pool_is_full():
    async def main():
        async def reply(ex):
            await asyncio.sleep(0.5)
            return ok()

        async with Scripted(reply) as server:
            http = client(server, pool_size=1)
            first = asyncio.create_task(http.post("/x", b"{}", timeout=5))
            await asyncio.sleep(0.05)
            with pytest.raises(_http.Timeout):
                await http.post("/x", b"{}", timeout=0.1)
            assert (await first).body == OK_BODY
            assert (await http.post("/x", b"{}", timeout=5)).body == OK_BODY
            await http.aclose()
            return server

    assert run(main).connections == 1


def test_lean_client_maps_statuses_timeouts_and_refusals():
    async def main():
        async def reply(ex):
            if ex.index == 0:
                return b"HTTP/1.1 429 Too Many\r\nRETRY-AFTER-MS: 250\r\ncontent-length: 2\r\n\r\n{}"
            await asyncio.sleep(5)

        async with Scripted(reply) as server:
            lean = LeanClient(server.url, {"authorization": "Bearer sk-test-secret"})
            with pytest.raises(RateLimitError) as limited:
                await lean.post("/x", {}, model_id="m:x")
            with pytest.raises(ProviderTimeoutError) as timed_out:
                await lean.post("/x", {}, model_id="m:x", timeout=0.1)
            await lean.aclose()
            return limited.value, timed_out.value, lean

    limited, timed_out, lean = run(main)
    assert limited.retry_after == 0.25 and timed_out.retryable
    assert "sk-test-secret" not in repr(lean) + repr(lean._http) + str(limited) + str(timed_out)


def test_a_stream_yields_pieces_as_they_arrive_and_closing_it_hangs_up():
    async def main():
        release = asyncio.Event()
        saw_close = asyncio.Event()

        async def reply(ex):
            if ex.index == 1:  # the abandoned stream: one piece, then wait for the client to go
                ex.writer.write(chunked(b"data: 1\n\n")[0] + chunked(b"data: 1\n\n")[1])
                if await ex.reader.read(1) == b"":
                    saw_close.set()
                return None
            head, *rest = chunked(b"data: 1\n\n", b"data: 2\n\n")
            ex.writer.write(head + rest[0])
            await release.wait()
            return rest[1:]

        async with Scripted(reply) as server:
            http = client(server)
            response = await http.open("/x", b"{}", headers=(("accept", "text/event-stream"),), connect_timeout=2)
            assert response.status == 200 and response.headers["transfer-encoding"] == "chunked"
            assert await response.read_chunk() == b"data: 1\n\n"  # before the server sent the rest
            release.set()
            assert await response.read() == b"data: 2\n\n"
            response.close()  # read to its end: back to the pool
            assert b"accept: text/event-stream" in server.exchanges[0].head.lower()
            abandoned = await http.open("/x", b"{}")
            assert await abandoned.read_chunk() == b"data: 1\n\n"
            abandoned.close()
            await asyncio.wait_for(saw_close.wait(), 2)
            await http.aclose()
            return server

    server = run(main)
    assert [ex.connection for ex in server.exchanges] == [0, 0]


def test_a_stream_cut_mid_body_raises_cut_short():
    async def main():
        def reply(ex):
            ex.writer.write(b"".join(chunked(b"data: 1\n\n")[:2]))
            ex.writer.close()

        async with Scripted(reply) as server:
            http = client(server)
            response = await http.open("/x", b"{}")
            assert await response.read_chunk() == b"data: 1\n\n"
            with pytest.raises(_http.ConnectionLost) as err:
                await response.read_chunk()
            response.close()
            await http.aclose()
            return err.value

    assert run(main).cut


def test_a_bad_base_url_or_header_is_refused_without_its_value():
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        _http.HTTPClient("ftp://example.com", {})
    http = _http.HTTPClient("http://127.0.0.1:1", {"authorization": "Bearer sk-x\r\ninjected: 1"})
    with pytest.raises(ValueError) as err:
        run(lambda: http.post("/x", b"{}"))
    assert "sk-x" not in str(err.value)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for a self-signed certificate")
def test_https_with_a_trusted_certificate(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    monkeypatch.setattr(_http, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    async def main():
        scripted = Scripted(lambda ex: ok())
        scripted.server = await asyncio.start_server(scripted._handle, "127.0.0.1", 0, ssl=server_context)
        port = scripted.server.sockets[0].getsockname()[1]
        http = _http.HTTPClient(f"https://localhost:{port}/v1", {})
        for _ in range(3):
            assert (await http.post("/x", b"{}", timeout=5)).body == OK_BODY
        await http.aclose()
        scripted.server.close()
        return scripted

    assert run(main).connections == 1


_UNCLOSED = """
import asyncio, socket, threading
from ember.models.providers._lean import LeanClient

listener = socket.create_server(("127.0.0.1", 0))
kept = []

def serve():
    conn, _ = listener.accept()
    kept.append(conn)  # open until the process ends
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\n{}")

threading.Thread(target=serve, daemon=True).start()

async def main():
    client = LeanClient(f"http://127.0.0.1:{listener.getsockname()[1]}", {})
    assert await client.post("/x", {}, model_id="m:x") == b"{}"
    return client  # never closed: dropped at exit, its connection idle in the pool

client = asyncio.run(main())
import sys
print("done" if "aiohttp" not in sys.modules else "aiohttp was imported")
"""


def test_an_unclosed_client_exits_quietly_and_aiohttp_is_never_imported(tmp_path):
    done = subprocess.run([sys.executable, "-c", _UNCLOSED], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert done.stderr == ""


# -- the parser alone, fed any split of any bytes --------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _feed(pieces, *, close: bool) -> tuple[asyncio.Future, _http._Connection]:
    """A connection's whole-body response future after ``pieces`` arrived (then the close)."""
    loop = asyncio.new_event_loop()
    conn = _http._Connection(loop, lambda c: None)
    conn.connection_made(_Transport())
    waiter = conn.send(b"POST / HTTP/1.1\r\n\r\n", None, False)
    for piece in pieces:
        conn.data_received(piece)
    if close:
        conn.connection_lost(None)
    loop.close()
    return waiter, conn


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


_body = st.binary(max_size=300)


@settings(max_examples=150, deadline=None)
@given(body=_body, sizes=st.lists(st.integers(1, 50), max_size=10), cuts=st.lists(st.integers(0, 10_000), max_size=8),
       chunk=st.booleans())  # fmt: skip
def test_fuzzed_splits_of_a_valid_response_read_the_same_body(body, sizes, cuts, chunk):
    if chunk:
        pieces, rest = [], body
        for size in sizes:
            pieces.append(rest[:size])
            rest = rest[size:]
        pieces = [p for p in [*pieces, rest] if p]
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
            b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nx-t: 1\r\n\r\n"  # fmt: skip
    else:
        wire = ok(body)
    waiter, conn = _feed(_splits(wire, cuts), close=False)
    assert waiter.done() and waiter.result() == body and conn.reusable
    for cut in {len(wire) // 2, len(wire) - 1}:  # the same response cut short: a ConnectionLost
        waiter, _ = _feed([wire[:cut]], close=True)
        assert isinstance(waiter.exception(), _http.ConnectionLost)


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=200) | st.builds(lambda a, b: a + b, st.sampled_from(
    [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", b"HTTP/1.0 204 x\r\n\r\n",
     b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"]),
    st.binary(max_size=60)), cuts=st.lists(st.integers(0, 1000), max_size=4))  # fmt: skip
def test_fuzzed_bytes_end_in_a_body_or_a_typed_error(junk, cuts):
    waiter, _ = _feed(_splits(junk, cuts), close=True)  # data_received never raises
    assert waiter.done()
    assert waiter.exception() is None or isinstance(waiter.exception(), _http.HTTPError)
