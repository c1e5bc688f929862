"""The loopback LLM server: OpenAI and Anthropic chat endpoints on 127.0.0.1, offline.

It runs its own asyncio loop on a daemon thread, so synchronous tests, async tests and
benchmarks can all point real SDK clients at it. One coroutine per connection and an
``asyncio.sleep`` per request make latency nearly free: a thousand slow requests in flight
cost a thousand sleeping coroutines, not a thousand threads.

A client that gives up on a request closes its connection; the server notices at once,
even while the request is still waiting out its latency, and records it
(``RequestRecord.client_closed``), so tests can check that a cancelled call really
closed its HTTP request instead of letting it run on.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ember.testing import _wire
from ember.testing._answer import Responder, complete, default_responder
from ember.testing._faults import Fault, choose_fault
from ember.testing._http import HttpError, HttpRequest, Response, read_request
from ember.testing._records import Recorder, RequestRecord, ServerStats
from ember.testing._request import InvalidRequest, Provider, parse_anthropic, parse_openai

_PARSERS = {"/v1/chat/completions": parse_openai, "/v1/messages": parse_anthropic}
#: Real servers the loopback server can imitate (``LoopbackServer(profile=...)``).
PROFILES = ("llama_cpp",)
_NOT_JSON = object()


class _Reader(asyncio.StreamReader):
    """A stream reader that also says when the client closed its side."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.Event()

    def feed_eof(self) -> None:
        super().feed_eof()
        self.closed.set()


async def _sleep_unless_closed(delay: float, reader: _Reader) -> bool:
    """Wait ``delay`` seconds; False as soon as the client closes the connection."""
    closed = asyncio.ensure_future(reader.closed.wait())
    try:
        done, _ = await asyncio.wait({closed}, timeout=delay)
    finally:
        closed.cancel()
    return not done


class LoopbackServer:
    """A local stand-in for the OpenAI and Anthropic APIs, for tests and benchmarks.

    ::

        with LoopbackServer(latency=0.05, faults=[Fault.rate_limit(on=[0])]) as server:
            client = openai.OpenAI(base_url=server.openai_base_url, api_key="test")
            ...
            assert server.requests[1].arrived - server.requests[0].arrived >= 1.0

    Args:
        latency: seconds every response waits before it is sent; settable while running.
        responder: answer text for a :class:`LoopbackRequest`; defaults to
            :func:`default_responder`. Settable while running.
        faults: failures to inject (see :class:`Fault`); the first matching one applies.
            Settable while running.
        seed: seeds the draws of rate-based faults, per request index.
        models: ids listed by ``GET /v1/models`` (any model id is answered regardless).
        host, port: where to listen; port 0 picks a free one.
        backlog: pending-connection queue, large so bursts of connects never stall.
        profile: behave like a particular real server (see :data:`PROFILES`); ``None``: the
            permissive default, which takes every request both APIs define.

    Profiles keep behaviour once seen against a real server in the tests:

    ``"llama_cpp"``
        llama-cpp-python's OpenAI-compatible server (as it served SmolLM2). Its
        ``response_format.type`` is ``text`` or ``json_object`` only: a ``json_schema`` request
        is refused with HTTP 500 and the pydantic validation error as text
        (``"Input should be 'text' or 'json_object'"``), a deterministic rejection that must
        not be retried. ``json_object`` with a ``schema`` is honoured (the responder sees the
        schema as :attr:`LoopbackRequest.output_schema`, and the default responder answers
        JSON valid against it). It answers one request at a time: later requests wait, not
        counted in flight, so ``stats.max_in_flight`` reads 1.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        responder: Responder | None = None,
        faults: Sequence[Fault] = (),
        seed: int = 0,
        models: Sequence[str] = ("loopback",),
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 4096,
        profile: str | None = None,
    ) -> None:
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
        self.profile = profile
        self.latency = latency
        #: Seconds between a stream's SSE events (0: the whole stream in one write). With a
        #: pause between events, a client that stops reading mid-stream is noticed and
        #: recorded as ``client_closed``.
        self.stream_interval = 0.0
        self.responder = responder or default_responder
        self.faults = faults
        self.seed = seed
        self.models = tuple(models)
        self.host, self.port, self._backlog = host, port, backlog
        self._recorder = Recorder()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._gate: asyncio.Event | None = None  # set while responses flow, cleared by pause()
        self._serial: asyncio.Lock | None = None  # one request at a time (a profile's server)
        self._startup_error: BaseException | None = None

    @property
    def latency(self) -> float:
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        self._latency = float(seconds)

    @property
    def faults(self) -> tuple[Fault, ...]:
        return self._faults

    @faults.setter
    def faults(self, faults: Sequence[Fault]) -> None:
        self._faults = tuple(faults)

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, the Anthropic SDK's ``base_url``."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``http://HOST:PORT/v1``, the OpenAI SDK's ``base_url``."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """``http://HOST:PORT`` (the Anthropic SDK adds ``/v1`` itself)."""
        return self.url

    def environ(self, api_key: str = "sk-loopback") -> dict[str, str]:
        """The variables that point the official SDKs, and so Ember, at this server.

        >>> with LoopbackServer() as server:
        ...     sorted(server.environ())
        ['ANTHROPIC_API_KEY', 'ANTHROPIC_BASE_URL', 'OPENAI_API_KEY', 'OPENAI_BASE_URL']

        Use with ``os.environ.update(...)``, ``monkeypatch.setenv`` or a subprocess's ``env``.
        """
        return {
            "OPENAI_BASE_URL": self.openai_base_url,
            "OPENAI_API_KEY": api_key,
            "ANTHROPIC_BASE_URL": self.anthropic_base_url,
            "ANTHROPIC_API_KEY": api_key,
        }

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of every request's record since the last :meth:`reset`, in arrival order."""
        return self._recorder.records()

    @property
    def stats(self) -> ServerStats:
        return self._recorder.stats()

    def reset(self) -> None:
        """Clear records and counters and restart request indexes (and so fault schedules) at 0."""
        self._recorder.reset()

    def pause(self) -> None:
        """Hold every response (after its latency) until :meth:`resume`; requests still arrive.

        With :meth:`wait_for_in_flight` this makes concurrency checks exact: pause, fire the
        calls, wait until N are in flight, resume."""
        self._in_loop(lambda: self._gate.clear())

    def resume(self) -> None:
        """Release the responses held since :meth:`pause`."""
        self._in_loop(lambda: self._gate.set())

    def _in_loop(self, action: Callable[[], object]) -> None:
        """Run ``action`` on the server's loop and wait for it, so it has taken effect on return."""
        if self._thread is None:
            raise RuntimeError("the server is not running; start() it first")
        if threading.current_thread() is self._thread:  # e.g. from a responder
            action()
            return

        async def call() -> None:
            action()

        asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def wait_for_in_flight(self, count: int, timeout: float = 10.0) -> None:
        """Block until at least ``count`` requests are in flight; TimeoutError after ``timeout`` s."""
        self._recorder.wait_for_in_flight(count, timeout)

    def start(self) -> LoopbackServer:
        """Start serving on a background thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the server is already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(ready),), name="ember-loopback", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = self._loop = None
            raise self._startup_error
        return self

    def close(self) -> None:
        """Stop serving: drop open connections and join the server thread."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._thread = self._loop = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self.url if self._thread is not None else "stopped"
        profile = f", profile={self.profile!r}" if self.profile else ""
        return f"LoopbackServer({state}, latency={self.latency}, faults={len(self.faults)}{profile})"

    async def _serve(self, ready: threading.Event) -> None:
        self._loop, self._stop, self._gate = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        self._gate.set()
        self._serial = asyncio.Lock() if self.profile == "llama_cpp" else None
        connections: set[asyncio.Task] = set()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            connections.add(task)
            self._recorder.connection(+1)
            try:
                await self._converse(reader, writer)
            except asyncio.CancelledError:
                pass  # close() ends idle and sleeping connections alike; end quietly
            finally:
                self._recorder.connection(-1)
                connections.discard(task)
                writer.close()

        def protocol() -> asyncio.StreamReaderProtocol:  # what start_server builds, with our reader
            return asyncio.StreamReaderProtocol(_Reader(), on_connect)

        try:
            server = await self._loop.create_server(protocol, self.host, self.port, backlog=self._backlog)
        except Exception as error:  # surfaced by start() on the calling thread
            self._startup_error = error
            ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        await self._stop.wait()
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection until either side closes it."""
        try:
            while True:
                try:
                    request = await read_request(reader)
                except HttpError as error:
                    writer.write(_wire.error("openai", error.status, str(error)).encode(keep_alive=False))
                    return
                if request is None:
                    return
                if self._serial is None:
                    keep = await self._respond(request, reader, writer)
                else:
                    async with self._serial:  # arrives (and is counted in flight) only on its turn
                        keep = await self._respond(request, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the client went away mid-request

    async def _respond(self, request: HttpRequest, reader: _Reader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        headers = request.headers
        provider: Provider = (
            "anthropic" if request.path == "/v1/messages" or "anthropic-version" in headers else "openai"
        )
        body = _decode_json(request.body)
        fields = body if isinstance(body, dict) else {}
        record = self._recorder.arrive(
            provider=provider,
            method=request.method,
            path=request.path,
            model=fields.get("model"),
            body=None if body is _NOT_JSON else body,
            stream=bool(fields.get("stream")),
            has_api_key=bool(headers.get("x-api-key") or headers.get("authorization", "").partition(" ")[2].strip()),
        )
        response = None
        try:
            fault = choose_fault(self._faults, record.index, provider, request.path, self.seed)
            record.fault = kind = fault and fault.kind
            delay = self._latency + (fault.delay if kind == "slow" else 0.0)
            if delay and not await _sleep_unless_closed(delay, reader):
                record.client_closed = True  # the client gave up: nothing to answer
                return False
            await self._gate.wait()
            if kind in (None, "slow", "stream_cut"):
                response = self._answer(request, provider, body, record)
            elif kind != "drop":
                response = _wire.fault_response(fault, provider, record.stream)
        finally:  # before sending: a client that has its answer finds the record complete
            self._recorder.finish(record, None if response is None else response.status)
        if response is None:  # dropped
            writer.transport.abort()
            return False
        if response.events is not None and (self.stream_interval or kind == "stream_cut"):
            return await self._send_stream(response, request.keep_alive, fault, reader, writer, record)
        writer.write(response.encode(request.keep_alive))
        await writer.drain()
        return request.keep_alive

    async def _send_stream(
        self, response: Response, keep_alive: bool, fault: Fault | None, reader: _Reader,
        writer: asyncio.StreamWriter, record: RequestRecord,
    ) -> bool:
        """Send a stream event by event: ``stream_interval`` apart, cut short by a ``stream_cut``."""
        head, *chunks = response.encode_parts(keep_alive)
        cut = fault.after if fault is not None and fault.kind == "stream_cut" else None
        writer.write(head)
        for i, chunk in enumerate(chunks):
            if cut is not None and i >= cut:
                await writer.drain()
                writer.transport.abort()  # mid-stream: the connection drops, no terminating chunk
                return False
            if i and self.stream_interval and not await _sleep_unless_closed(self.stream_interval, reader):
                record.client_closed = True  # the client stopped reading mid-stream
                return False
            writer.write(chunk)
            await writer.drain()
        return keep_alive

    def _answer(self, request: HttpRequest, provider: Provider, body: Any, record: RequestRecord) -> Response:
        parse = _PARSERS.get(request.path)
        if request.method == "GET" and request.path == "/v1/models":
            return _wire.models_list(provider, self.models)
        if request.method != "POST" or parse is None:
            return _wire.error(provider, 404, f"Invalid URL ({request.method} {request.path})")
        if body is _NOT_JSON:
            return _wire.error(provider, 400, "the request body is not valid JSON")
        try:
            parsed = parse(body, record.index)
        except InvalidRequest as error:
            return _wire.error(provider, 400, str(error))
        if self.profile == "llama_cpp" and provider == "openai":
            form = body.get("response_format")
            kind = form.get("type") if isinstance(form, dict) else None
            if form is not None and kind not in ("text", "json_object"):
                return _wire.llama_cpp_validation_error("response_format.type", kind, "'text' or 'json_object'")
        try:
            completion = complete(parsed, self.responder)
        except Exception as error:  # a broken responder is the test's bug: report it, keep serving
            return _wire.error(provider, 500, f"responder raised {type(error).__name__}: {error}")
        record.answer = completion.text
        record.input_tokens, record.output_tokens = completion.prompt_tokens, completion.completion_tokens
        if provider == "openai":
            return _wire.openai_completion(parsed, completion, int(time.time()))
        return _wire.anthropic_message(parsed, completion)


def _decode_json(raw: bytes) -> Any:
    """The JSON body: None when empty, ``_NOT_JSON`` when it does not parse."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return _NOT_JSON
