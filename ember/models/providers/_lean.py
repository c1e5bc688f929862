"""The lean transport: OpenAI chat-completions and Anthropic messages over aiohttp + orjson.

The official SDKs cost ~4-5 ms of client CPU per call (httpx, pydantic response models,
retries and hooks we switch off anyway). Against a real API that is noise beside hundreds of
milliseconds of latency; against a fast self-hosted server (vLLM, SGLang, Ollama, a loopback
test server) it *is* the bottleneck. This transport posts the same JSON body the SDK would
send, on one keep-alive ``aiohttp`` pool per adapter sized to the provider's concurrency
limit, parses the reply with ``orjson`` into the same :class:`ProviderResult`, and maps
every failure onto the same typed errors as :mod:`._sdk_errors`:

========================================  ===============================================
what happened                             error (``retryable``)
========================================  ===============================================
429 (``retry-after`` / ``retry-after-ms``) ``RateLimitError`` (yes, with ``retry_after``)
5xx, 408                                  ``ProviderError`` (yes, with ``retry_after``)
4xx naming the context length             ``ContextLengthExceededError`` (no)
404                                       ``ModelNotFoundError`` (no)
other 4xx                                 ``ProviderError`` (no)
timeout                                   ``ProviderTimeoutError`` (yes)
refused / dropped connection              ``ProviderConnectionError`` (yes)
200 whose body is cut short (fewer bytes  ``ProviderConnectionError`` (yes): it is a
than its Content-Length, or a chunked     dropped connection, whatever the status said
body never terminated)
200 with a complete body that is not the  ``MalformedResponseError`` (no), with a snippet
expected JSON
a stream whose connection drops, or that  ``ProviderConnectionError`` (yes)
ends before its last event (``[DONE]`` /
``message_stop``)
a stream event that is not the expected   ``MalformedResponseError`` (no)
JSON; an in-stream ``error`` event        its typed error (``overloaded_error``: yes)
========================================  ===============================================

Streams (:meth:`LeanClient.stream`) are server-sent events read straight off the aiohttp
response: :class:`SSEParser` splits the bytes into ``(event, data)`` pairs for both wire
formats, and :class:`OpenAIStreamDecoder` / :class:`AnthropicStreamDecoder` turn those
into text deltas and the final :class:`ProviderResult`. The response is closed in a
``finally``, so an abandoned stream closes its connection at once.

Messages name the failure, never a header: the key travels only in the request headers,
which no error or log line carries (and :class:`~ember.EmberError` redacts registered keys
anyway).

Choice of client and of the default, by measurement (``bench/bench_transport.py``, 2-core
shared machine, loopback server in its own process at 0 ms latency, concurrency 64, best of
3, client CPU per call in brackets)::

    sdk (official openai client)     815 calls/s  (1.23 ms)
    lean (this module, via adapter)  9,264-9,873  (0.10-0.11 ms)   = 11.4x the SDK
    aiohttp used directly            10,870-11,044 (0.09 ms)
    httpcore pool used directly      191          (5.2 ms: its pool's scheduling, not HTTP)
    raw asyncio-streams client       25,600-26,900 (0.02-0.03 ms)  lean = 0.34-0.39 of it

aiohttp (with its C HTTP parser) is the fastest of the two candidate clients by far, so the
lean transport is aiohttp. The default is
``lean`` for ``openai_compatible`` providers (self-hosted and third-party servers, where
latency is low and client CPU is what limits throughput) and ``sdk`` for the ``openai`` and
``anthropic`` kinds (the official APIs, whose latency dwarfs the SDK's cost, and whose SDKs
follow API changes first). Any provider can choose with ``transport: sdk | lean``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import orjson

from ember.models._errors import (
    ContextLengthExceededError,
    MalformedResponseError,
    ModelError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
)
from ember.models._types import ProviderResult
from ember.models.providers._base import client_options
from ember.models.providers._sdk_errors import is_request_validation_error, retry_after_seconds

__all__ = [
    "AnthropicStreamDecoder", "LeanClient", "OpenAIStreamDecoder", "SSEParser", "default_transport", "lean_body",
    "map_status", "parse_anthropic", "parse_openai", "stream_result", "transport_of",
]

TRANSPORTS = ("sdk", "lean")
_CONTEXT_MARKERS = ("context_length_exceeded", "prompt is too long", "maximum context length", "too many tokens")
_OFFICIAL_HOSTS = ("api.openai.com", "api.anthropic.com")


def default_transport(kind: str, base_url: str | None) -> str:
    """``lean`` for OpenAI-compatible servers that are not the official API; ``sdk`` otherwise."""
    if kind != "openai_compatible":
        return "sdk"
    return "sdk" if base_url and any(host in base_url for host in _OFFICIAL_HOSTS) else "lean"


def transport_of(settings) -> str:
    """The transport a provider's settings choose (``transport`` unset: :func:`default_transport`)."""
    chosen = getattr(settings, "transport", None)
    return chosen if chosen in TRANSPORTS else default_transport(settings.kind, settings.base_url)


def lean_body(payload: dict[str, Any]) -> dict[str, Any]:
    """The SDK-call ``payload`` as the JSON body the SDK would send: ``extra_body`` merged in."""
    extra = payload.pop("extra_body", None)
    if extra:
        payload.update(extra)
    return payload


def _error_text(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        inner = parsed.get("error", parsed)
        if isinstance(inner, dict) and inner.get("message"):
            return " ".join(str(inner.get(k, "")) for k in ("type", "code", "message") if inner.get(k))
    text = body[:300].decode("utf-8", "replace").strip()
    return text or "no details"


def map_status(status: int, body: bytes, headers: Mapping[str, str] | None, model_id: str) -> ModelError:
    """An HTTP error status as the typed error the SDK path raises for it."""
    text = _error_text(body)
    retry_after = retry_after_seconds(headers)
    if status == 429:
        return RateLimitError(
            f"rate limited: {text}", model_id=model_id, status_code=status, retryable=True, retry_after=retry_after
        )
    if status >= 500 or status == 408:
        # A 5xx whose body is a request-validation error (llama-cpp-python's 500) fails the same
        # way every time: not retried, as on the SDK path (:func:`._sdk_errors.map_sdk_error`).
        retryable = not (status >= 500 and is_request_validation_error(text))
        return ProviderError(
            f"provider error: {text}", model_id=model_id, status_code=status, retryable=retryable,
            retry_after=retry_after if retryable else None,
        )
    if any(marker in text.lower() for marker in _CONTEXT_MARKERS):
        return ContextLengthExceededError(f"context length exceeded: {text}", model_id=model_id, status_code=status)
    if status == 404:
        return ModelNotFoundError(model_id, reason=f"The provider says: {text}")
    return ProviderError(f"request rejected: {text}", model_id=model_id, status_code=status)


def _snippet(body: bytes) -> str:
    return body[:400].decode("utf-8", "replace")


def _load(body: bytes, model_id: str, what: str = "the provider's response") -> dict:
    """``body`` as a JSON object, or :class:`MalformedResponseError` naming ``what`` it was."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedResponseError(f"could not parse {what}", snippet=_snippet(body), model_id=model_id) from None
    if not isinstance(parsed, dict):
        raise MalformedResponseError(f"{what} is not a JSON object", snippet=_snippet(body), model_id=model_id)
    return parsed


def _tokens(usage: Any, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_openai(body: bytes, model_id: str) -> ProviderResult:
    """A ``chat.completion`` body as a result; anything else raises :class:`MalformedResponseError`."""
    data = _load(body, model_id)
    choices = data.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedResponseError("response has no message content", snippet=_snippet(body), model_id=model_id)
    usage = data.get("usage")
    return ProviderResult(
        text=content,
        input_tokens=_tokens(usage, "prompt_tokens"),
        output_tokens=_tokens(usage, "completion_tokens"),
        finish_reason=_optional_str(first.get("finish_reason")),
        raw_model=_optional_str(data.get("model")),
    )


def parse_anthropic(body: bytes, model_id: str) -> ProviderResult:
    """A ``message`` body as a result; anything else raises :class:`MalformedResponseError`."""
    data = _load(body, model_id)
    blocks = data.get("content")
    texts = [
        b["text"]
        for b in (blocks if isinstance(blocks, list) else ())
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    if not texts:
        raise MalformedResponseError("response has no text content", snippet=_snippet(body), model_id=model_id)
    usage = data.get("usage")
    return ProviderResult(
        text="".join(texts),
        input_tokens=_tokens(usage, "input_tokens"),
        output_tokens=_tokens(usage, "output_tokens"),
        finish_reason=_optional_str(data.get("stop_reason")),
        raw_model=_optional_str(data.get("model")),
    )


# -- streams: server-sent events ---------------------------------------------------------------


class SSEParser:
    """Incremental ``text/event-stream`` parser shared by both wire formats.

    :meth:`feed` takes bytes as they arrive (split anywhere) and returns the complete events
    in them as ``(event name or None, data bytes)``; comment lines and fields other than
    ``event``/``data`` are skipped, several ``data`` lines join with a newline (the SSE
    spec). ``pending`` says whether an event was begun but not finished; at the end of the
    body such an event is dropped, as the SSE spec says (the stream then lacks its last event).
    """

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    @property
    def pending(self) -> bool:
        return bool(self._buffer.strip() or self._data or self._event is not None)

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[tuple[str | None, bytes]] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line dispatches the event
                if self._data:
                    events.append((self._event, b"\n".join(self._data)))
                self._event, self._data = None, []
                continue
            if line[:1] == b":":
                continue  # a comment (keep-alive)
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
        self._buffer = buffer[start:]
        return events


def _stream_error(payload: Any, model_id: str) -> ModelError:
    """An in-stream ``error`` event as a typed error (Anthropic's ``overloaded_error`` and
    ``api_error``, and a rate limit, are transient)."""
    inner = payload.get("error", payload) if isinstance(payload, dict) else {}
    inner = inner if isinstance(inner, dict) else {}
    kind = str(inner.get("type") or inner.get("code") or "error")
    text = f"{kind} {inner.get('message') or ''}".strip()
    if "rate_limit" in kind:
        return RateLimitError(f"rate limited: {text}", model_id=model_id, retryable=True)
    if kind in ("overloaded_error", "api_error", "server_error", "internal_server_error"):
        return ProviderError(f"provider error mid-stream: {text}", model_id=model_id, retryable=True)
    return ProviderError(f"stream failed: {text}", model_id=model_id)


def _truncated(model_id: str, last: str) -> ProviderConnectionError:
    return ProviderConnectionError(
        f"connection failed: the stream ended before {last}", model_id=model_id, retryable=True
    )


class OpenAIStreamDecoder:
    """``chat.completion.chunk`` events to text deltas, then the result (usage from the final
    ``stream_options.include_usage`` chunk; the stream must end with ``data: [DONE]``)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.parts: list[str] = []
        self.usage: dict | None = None
        self.finish: str | None = None
        self.model: str | None = None
        self.done = False

    def feed(self, event: str | None, data: bytes) -> str | None:
        if self.done:
            return None
        if data.strip() == b"[DONE]":
            self.done = True
            return None
        chunk = _load(data, self.model_id, "a stream event")
        if event == "error" or "error" in chunk:
            raise _stream_error(chunk, self.model_id)
        self.model = _optional_str(chunk.get("model")) or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise MalformedResponseError("a stream chunk has no choices", snippet=_snippet(data), model_id=self.model_id)
        text = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise MalformedResponseError("a stream choice is not an object", snippet=_snippet(data),
                                             model_id=self.model_id)
            if isinstance(choice.get("finish_reason"), str):
                self.finish = choice["finish_reason"]
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                text.append(content)
        if not text:
            return None
        piece = "".join(text)
        self.parts.append(piece)
        return piece

    def result(self) -> ProviderResult:
        if not self.done:
            raise _truncated(self.model_id, "data: [DONE]")
        if self.usage is None:
            raise MalformedResponseError(
                "stream ended without usage (the server ignored stream_options.include_usage)",
                snippet="".join(self.parts), model_id=self.model_id,
            )
        return ProviderResult(
            text="".join(self.parts),
            input_tokens=_tokens(self.usage, "prompt_tokens"),
            output_tokens=_tokens(self.usage, "completion_tokens"),
            finish_reason=self.finish,
            raw_model=self.model,
        )


class AnthropicStreamDecoder:
    """Messages-API events to text deltas, then the result: input tokens from ``message_start``,
    text from ``content_block_delta`` (``text_delta``), output tokens and the stop reason from
    ``message_delta``; the stream must end with ``message_stop``."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.parts: list[str] = []
        self.input_tokens: int | None = None
        self.output_tokens = 0
        self.stop: str | None = None
        self.model: str | None = None
        self.done = False

    def _malformed(self, reason: str, data: bytes) -> MalformedResponseError:
        return MalformedResponseError(reason, snippet=_snippet(data), model_id=self.model_id)

    def feed(self, event: str | None, data: bytes) -> str | None:
        if self.done:
            return None
        payload = _load(data, self.model_id, "a stream event")
        kind = payload.get("type", event)
        if kind == "error" or event == "error":
            raise _stream_error(payload, self.model_id)
        if kind == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict):
                raise self._malformed("message_start has no message", data)
            usage = message.get("usage")
            self.input_tokens = _tokens(usage, "input_tokens")
            self.output_tokens = _tokens(usage, "output_tokens")
            self.model = _optional_str(message.get("model"))
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                raise self._malformed("content_block_delta has no delta", data)
            text = delta.get("text")
            if delta.get("type") == "text_delta" and isinstance(text, str) and text:
                self.parts.append(text)
                return text
        elif kind == "message_delta":
            delta, usage = payload.get("delta"), payload.get("usage")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self.stop = delta["stop_reason"]
            if isinstance(usage, dict):
                self.output_tokens = _tokens(usage, "output_tokens")
                if isinstance(usage.get("input_tokens"), int):
                    self.input_tokens = _tokens(usage, "input_tokens")
        elif kind == "message_stop":
            self.done = True
        return None  # ping, content_block_start/stop, and event types yet to come

    def result(self) -> ProviderResult:
        if not self.done:
            raise _truncated(self.model_id, "message_stop")
        if self.input_tokens is None or self.stop is None:
            raise MalformedResponseError(
                "stream ended before message_start and message_delta", snippet="".join(self.parts),
                model_id=self.model_id,
            )
        return ProviderResult(
            text="".join(self.parts),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            finish_reason=self.stop,
            raw_model=self.model,
        )


async def stream_result(
    events: AsyncIterator[tuple[str | None, bytes]], decoder: OpenAIStreamDecoder | AnthropicStreamDecoder
) -> AsyncIterator[str | ProviderResult]:
    """``events`` through ``decoder``: text deltas, then exactly one :class:`ProviderResult`
    (the :meth:`~ember.models.providers.Provider.astream` contract). Closing this generator
    closes ``events`` (and so the HTTP response)."""
    try:
        async for name, data in events:
            delta = decoder.feed(name, data)
            if delta:
                yield delta
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    yield decoder.result()


@contextlib.contextmanager
def _typed_errors(aiohttp: Any, model_id: str, what: str) -> Iterator[None]:
    """aiohttp's failures as the SDK path's typed errors; ``what`` names the body for a cut one
    (the status line came, the body did not: Content-Length or chunking unmet, a dropped connection)."""
    try:
        yield
    except ModelError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise ProviderTimeoutError("request timed out", model_id=model_id, retryable=True) from None
    except aiohttp.ClientPayloadError:
        raise ProviderConnectionError(
            f"connection failed: {what} was cut short", model_id=model_id, retryable=True
        ) from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, OSError) as exc:
        raise ProviderConnectionError(
            f"connection failed: {type(exc).__name__}", model_id=model_id, retryable=True
        ) from None


class LeanClient:
    """One keep-alive HTTP/1.1 pool to one server; created and used on Ember's I/O loop.

    ``headers`` carry the credential: they are sent, never formatted into a message.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        query: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        pool_size: int = 64,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"content-type": "application/json", "accept": "application/json", **headers}
        self._query = dict(query or {}) or None
        self._timeout = timeout
        self._pool_size = max(1, int(pool_size))
        self._session = None
        self._urls: dict[str, Any] = {}
        self._timeouts: dict[float, Any] = {}

    def __repr__(self) -> str:
        return f"LeanClient(base_url={self._base!r}, pool_size={self._pool_size})"

    def _get_session(self):
        if self._session is None:
            import aiohttp

            self._aiohttp = aiohttp
            connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0, keepalive_timeout=30.0)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    def _url(self, path: str):
        url = self._urls.get(path)
        if url is None:  # parsed once per path: yarl's parsing is a fair share of a call's CPU
            import yarl

            url = yarl.URL(self._base + path)
            if self._query:
                url = url.update_query(self._query)
            url = self._urls[path] = url
        return url

    def _timeout_of(self, seconds: float | None):
        if not seconds or seconds == self._timeout:
            return None  # the session's own
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            if len(self._timeouts) > 64:
                self._timeouts.clear()
            timeout = self._timeouts[seconds] = self._aiohttp.ClientTimeout(total=seconds)
        return timeout

    async def post(self, path: str, payload: dict[str, Any], *, model_id: str, timeout: float | None = None) -> bytes:
        """POST ``payload`` as JSON; the body of a 2xx answer, or the typed error of anything else."""
        session = self._get_session()
        aiohttp = self._aiohttp
        extra = {} if (chosen := self._timeout_of(timeout)) is None else {"timeout": chosen}
        with _typed_errors(aiohttp, model_id, "the response body"):
            async with session.post(
                self._url(path), data=orjson.dumps(payload), allow_redirects=False, **extra
            ) as response:
                body = await response.read()
                status = response.status
                if 200 <= status < 300:
                    return body
                raise map_status(status, body, response.headers, model_id)

    async def stream(
        self, path: str, payload: dict[str, Any], *, model_id: str
    ) -> AsyncIterator[tuple[str | None, bytes]]:
        """POST ``payload`` and read the answer as server-sent events: ``(event, data)`` pairs.

        An error status raises :func:`map_status`'s error before any event; a connection that
        drops mid-body raises a retryable :class:`ProviderConnectionError`. No overall deadline
        (the service bounds the wait for each item). The response is closed in a ``finally``:
        closing or cancelling this generator closes the connection at once.
        """
        session = self._get_session()
        aiohttp = self._aiohttp
        response = None
        finished = False
        try:
            with _typed_errors(aiohttp, model_id, "the stream"):
                response = await session.post(
                    self._url(path), data=orjson.dumps(payload), allow_redirects=False,
                    headers={"accept": "text/event-stream"}, timeout=_stream_timeout(aiohttp, self._timeout),
                )  # fmt: skip
                if not 200 <= response.status < 300:
                    raise map_status(response.status, await response.read(), response.headers, model_id)
                parser = SSEParser()
                async for chunk in response.content.iter_any():
                    for event in parser.feed(chunk):
                        yield event
                # An event left unterminated at the end is dropped (the SSE rule): the decoder then
                # finds its stream ended early, a truncation.
                finished = True
        finally:
            if response is not None:
                if finished:
                    response.release()  # read to the end: the connection goes back to the pool
                else:
                    response.close()  # abandoned or broken: drop the connection now

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def __del__(self, _suppress=contextlib.suppress) -> None:  # bound now: at exit module globals may be gone
        # A program that ends without ``ModelService.close()`` drops its adapters unclosed, as it
        # may with the SDK's httpx client, which is silent; aiohttp would log "Unclosed client
        # session" / "Unclosed connector" instead. Close the sockets here, quietly.
        session, self._session = self._session, None
        if session is not None and not session.closed:
            connector = session.connector
            session.detach()
            with _suppress(Exception):
                connector._close()  # what the connector's own __del__ does, minus the warning


def _stream_timeout(aiohttp, connect: float):
    """A stream's timeout: none overall (the service bounds each item's wait), ``connect`` to connect."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect)


def client_for(settings, base_url_env: str | None, default_url: str, auth: Mapping[str, str]) -> LeanClient:
    """A provider's lean client: its base URL (settings, then ``base_url_env``, then
    ``default_url``), ``auth`` headers plus the config's ``default_headers``/``default_query``,
    and a pool sized to its concurrency limit (``max_connections`` in its settings)."""
    options = client_options(settings.options)
    return LeanClient(
        settings.base_url or (os.environ.get(base_url_env) if base_url_env else None) or default_url,
        {**auth, **options.get("default_headers", {})},
        query=options.get("default_query"),
        timeout=settings.timeout,
        pool_size=getattr(settings, "max_connections", None) or 64,
    )
