"""The lean transport: OpenAI chat-completions and Anthropic messages over Ember's HTTP/1.1 client + orjson.

The official SDKs cost ~4-5 ms of client CPU per call (httpx, pydantic response models,
retries and hooks we switch off anyway). Against a real API that is noise beside hundreds of
milliseconds of latency; against a fast self-hosted server (vLLM, SGLang, Ollama, a loopback
test server) it *is* the bottleneck. This transport posts the same JSON body the SDK would
send, on one keep-alive pool per adapter sized to the provider's concurrency limit
(:mod:`._http`, a small HTTP/1.1 client on asyncio), parses the reply with ``orjson`` into
the same :class:`ProviderResult`, and maps every failure onto the same typed errors as
:mod:`._sdk_errors`:

========================================  ===============================================
what happened                             error (``retryable``)
========================================  ===============================================
429 (``retry-after`` / ``retry-after-ms``) ``RateLimitError`` (yes, with ``retry_after``)
5xx, 408                                  ``ProviderError`` (yes, with ``retry_after``)
4xx naming the context length             ``ContextLengthExceededError`` (no)
404                                       ``ModelNotFoundError`` (no)
other 4xx                                 ``ProviderError`` (no)
timeout                                   ``ProviderTimeoutError`` (yes)
refused / dropped connection              ``ProviderConnectionError`` (yes); a request on a
                                          reused connection that got no byte back is first
                                          sent once more on a new one (the keep-alive race)
a reply that is not HTTP/1.x (status      ``ProviderConnectionError`` (yes)
line, Content-Length, chunk size)
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

Streams (:meth:`LeanClient.stream`) are server-sent events read off the connection as the
bytes arrive: :class:`SSEParser` splits the bytes into ``(event, data)`` pairs for both wire
formats, and :class:`OpenAIStreamDecoder` / :class:`AnthropicStreamDecoder` turn those
into text deltas and the final :class:`ProviderResult`. The response is closed in a
``finally``, so an abandoned stream closes its connection at once.

Messages name the failure, never a header: the key travels only in the request headers,
which no error or log line carries (and :class:`~ember.EmberError` redacts registered keys
anyway).

Choice of client and of the default, by measurement (``bench/bench_transport.py``, 2-core
machine shared with other work (load 3.5-4.7), loopback server in its own process at 0 ms
latency, concurrency 64, best of 3, four runs and a fifth of sdk, lean and raw alone; client
CPU per call in brackets)::

    sdk (official openai client)     366-651       (1.4-1.7 ms)
    lean (this module, via adapter)  5,720-9,813   (0.04-0.07 ms)   = 14.6-22.9x the SDK
    aiohttp used directly            2,975-5,860   (0.11-0.17 ms)
    raw asyncio-streams client       7,082-13,558  (0.03-0.04 ms)   lean = 0.72-0.85 of it

Before :mod:`._http`, the lean transport was aiohttp (the faster of aiohttp and httpcore,
whose pool costs ~5 ms of scheduling per call) and reached 0.34-0.39 of the raw client: a
general client's machinery (URL objects, cookies, redirects, a stream reader per response)
cost more than the HTTP. A client that only posts JSON and reads the answer, parsing in its
protocol's ``data_received``, costs 1.2-1.8x the raw client's CPU per call (which parses no
header but Content-Length and handles no error), adapter included.

The default is ``lean`` for ``openai_compatible`` providers (self-hosted and third-party
servers, where latency is low and client CPU is what limits throughput) and ``sdk`` for the
``openai`` and ``anthropic`` kinds (the official APIs, whose latency dwarfs the SDK's cost,
and whose SDKs follow API changes first). Any provider can choose with ``transport: sdk | lean``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
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
from ember.models.providers._http import ConnectionLost, HTTPClient, HTTPError, Timeout
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


def _typed(error: HTTPError, model_id: str, what: str) -> ModelError:
    """The HTTP client's failure as the SDK path's typed error; ``what`` names the body for a
    cut one (the head came, the body did not all come: Content-Length or chunking unmet)."""
    if isinstance(error, Timeout):
        return ProviderTimeoutError("request timed out", model_id=model_id, retryable=True)
    if isinstance(error, ConnectionLost) and error.cut:
        return ProviderConnectionError(f"connection failed: {what} was cut short", model_id=model_id, retryable=True)
    return ProviderConnectionError(f"connection failed: {error}", model_id=model_id, retryable=True)


#: What a stream asks for instead of JSON.
_SSE = (("accept", "text/event-stream"),)


class LeanClient:
    """One keep-alive HTTP/1.1 pool to one server (:class:`._http.HTTPClient`); used on Ember's I/O loop.

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
        self._timeout = timeout
        self._http = HTTPClient(
            self._base, {"content-type": "application/json", "accept": "application/json", **headers},
            query=query, pool_size=pool_size,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"LeanClient(base_url={self._base!r}, pool_size={self._pool_size})"

    @property
    def _pool_size(self) -> int:
        return self._http.pool_size

    async def post(self, path: str, payload: dict[str, Any], *, model_id: str, timeout: float | None = None) -> bytes:
        """POST ``payload`` as JSON; the body of a 2xx answer, or the typed error of anything else."""
        try:
            response = await self._http.post(path, orjson.dumps(payload), timeout=timeout or self._timeout)
        except HTTPError as error:
            raise _typed(error, model_id, "the response body") from None
        if 200 <= response.status < 300:
            return response.body
        raise map_status(response.status, response.body, response.headers, model_id)

    async def stream(
        self, path: str, payload: dict[str, Any], *, model_id: str
    ) -> AsyncIterator[tuple[str | None, bytes]]:
        """POST ``payload`` and read the answer as server-sent events: ``(event, data)`` pairs.

        An error status raises :func:`map_status`'s error before any event; a connection that
        drops mid-body raises a retryable :class:`ProviderConnectionError`. Only connecting is
        bounded in time (by the client's timeout): the service bounds the wait for each item.
        The response is closed in a ``finally``: closing or cancelling this generator closes
        the connection at once (one read to its end goes back to the pool).
        """
        response = None
        try:
            try:
                response = await self._http.open(path, orjson.dumps(payload), headers=_SSE,
                                                 connect_timeout=self._timeout)  # fmt: skip
                if not 200 <= response.status < 300:
                    raise map_status(response.status, await response.read(), response.headers, model_id)
                parser = SSEParser()
                while chunk := await response.read_chunk():
                    for event in parser.feed(chunk):
                        yield event
                # An event left unterminated at the end is dropped (the SSE rule): the decoder then
                # finds its stream ended early, a truncation.
            except HTTPError as error:
                raise _typed(error, model_id, "the stream") from None
        finally:
            if response is not None:
                response.close()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __del__(self, _suppress=contextlib.suppress) -> None:  # bound now: at exit module globals may be gone
        # A program that ends without ``ModelService.close()`` drops its adapters unclosed, as it
        # may with the SDK's httpx client, which is silent: close the sockets, as quietly.
        with _suppress(Exception):
            self._http.close()


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
