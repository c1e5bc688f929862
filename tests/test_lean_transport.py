"""The lean transport (Ember's HTTP/1.1 client + orjson) ends every fault exactly as the SDK path does.

The fault scenarios of ``test_model_service.py`` run once per transport; a raw socket server
adds the one fault the loopback server cannot send (a 200 whose body is cut short), and
Hypothesis fuzzes the response parsers with malformed and truncated bodies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import types

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.models import (
    ContextLengthExceededError,
    MalformedResponseError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
)
from ember.models._errors import ModelNotFoundError
from ember.models.providers import _lean
from ember.models.providers._sdk_errors import is_request_validation_error
from ember.testing import Fault

TRANSPORTS = ["sdk", "lean"]
OPENAI, ANTHROPIC = "openai:gpt-4o", "anthropic:claude-3-5-haiku"


@pytest.fixture(params=TRANSPORTS)
def models(request, loopback_models):
    """``loopback_models`` with both providers on one transport."""
    transport = request.param
    loopback_models.config.update_config(
        "model_registry", {"providers": {"openai": {"transport": transport}, "anthropic": {"transport": transport}}}
    )
    loopback_models.transport = transport
    return loopback_models


def _adapter_is(models, model_id):
    adapter = models.service._route(model_id).adapter
    assert adapter._lean == (models.transport == "lean")
    return adapter


@pytest.mark.parametrize("model_id", [OPENAI, ANTHROPIC])
def test_success_usage_and_wire_body(models, model_id):
    _adapter_is(models, model_id)
    response = models.service.invoke_model(
        model_id, "What is 2 + 2?", system="Be brief.", temperature=0.3, max_tokens=7, stop=["\n"],
        extra={"repetition_penalty": 1.1},
    )
    assert response.text == "4" and response.attempts == 1
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    body = models.server.requests[-1].body
    assert body["temperature"] == 0.3 and body["repetition_penalty"] == 1.1 and "extra_body" not in body
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 7


@pytest.mark.parametrize("model_id", [OPENAI, ANTHROPIC])
@pytest.mark.parametrize(
    "fault",
    [Fault.rate_limit(retry_after=0.05, on=[0]), Fault.server_error(503, on=[0]), Fault.drop(on=[0])],
    ids=["429", "5xx", "dropped"],
)
def test_transient_failure_then_success(models, fault, model_id):
    models.server.faults = [fault]
    response = models.service.invoke_model(model_id, "What is 2 + 2?")
    assert response.text == "4" and response.attempts == 2
    assert models.server.stats.total == 2


def test_timeout_then_success(models):
    models.server.faults = [Fault.slow(delay=5.0, on=[0])]
    response = models.service.invoke_model(ANTHROPIC, "What is 3 * 3?", timeout=0.3)
    assert response.text == "9" and response.attempts == 2


def test_exhausted_retries_raise_typed_errors(models):
    models.config.update_config("model_registry", {"max_retries": 2})
    models.server.faults = [Fault.rate_limit(retry_after=0.01)]
    with pytest.raises(RateLimitError) as err:
        models.service.invoke_model(OPENAI, "hi")
    assert err.value.attempts == 3 and err.value.status_code == 429
    assert models.server.stats.total == 3

    models.server.faults = [Fault.server_error(500)]
    with pytest.raises(ProviderError) as err:
        models.service.invoke_model(ANTHROPIC, "hi")
    assert err.value.status_code == 500 and err.value.attempts == 3

    models.server.faults = [Fault.slow(delay=5.0)]
    with pytest.raises(ProviderTimeoutError):
        models.service.invoke_model(OPENAI, "hi", timeout=0.1)


def test_retry_after_is_honoured(models):
    models.server.faults = [Fault.rate_limit(retry_after=0.4, on=[0, 1])]
    models.service.invoke_model(OPENAI, "hi")
    arrivals = [r.arrived for r in models.server.requests]
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] >= 0.4 and arrivals[2] - arrivals[1] >= 0.4


@pytest.mark.parametrize("model_id", [OPENAI, ANTHROPIC])
def test_non_retryable_errors_are_typed_and_immediate(models, model_id):
    server, service = models.server, models.service
    server.faults = [Fault.context_length()]
    with pytest.raises(ContextLengthExceededError) as err:
        service.invoke_model(model_id, "long")
    assert err.value.status_code == 400 and not err.value.retryable
    assert server.stats.total == 1
    server.faults = [Fault.malformed()]
    with pytest.raises(MalformedResponseError) as err:
        service.invoke_model(model_id, "hi")
    assert err.value.snippet and err.value.attempts == 1  # a truncated piece of what came back
    assert server.stats.total == 2


def test_planted_key_never_appears(models, caplog):
    key, server, service = models.key, models.server, models.service
    caplog.set_level(logging.DEBUG)
    server.faults = [Fault.server_error(500)]
    models.config.update_config("model_registry", {"max_retries": 0})
    errors = []
    for model_id in (OPENAI, ANTHROPIC):
        with pytest.raises(ProviderError) as err:
            service.invoke_model(model_id, "hi")
        errors.append(err.value)
        adapter = service._route(model_id).adapter
        errors.append(adapter)
        errors.append(getattr(adapter, "_lean_client", None))
    for text in [caplog.text, *map(str, errors), *map(repr, errors)]:
        assert key not in text
    assert all(r.has_api_key for r in server.requests)


def test_pool_is_sized_to_the_provider_concurrency(loopback_models):
    loopback_models.config.update_config(
        "model_registry", {"providers": {"openai": {"transport": "lean", "max_concurrency": 7}}}
    )
    adapter = loopback_models.service._route(OPENAI).adapter
    assert adapter.settings.max_connections == 7 and adapter._lean_transport()._pool_size == 7


# -- a 200 whose body is cut short: the loopback server cannot send one, a raw socket can ------------------


class _TruncatingServer:
    """HTTP/1.1 on a raw socket: the first ``cut`` requests get a 200 whose Content-Length
    promises more than is sent before the connection closes; later ones get ``good``."""

    def __init__(self, good: bytes, cut: int = 1) -> None:
        self.good, self.cut, self.count, self.connections, self.heads = good, cut, 0, 0, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
                    0,
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                buffer = rest[length:]
                self.count += 1
                self.heads.append(head.decode("latin-1"))
                if self.count <= self.cut:
                    part = self.good[: len(self.good) // 2]
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(self.good), part))  # fmt: skip
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(self.good), self.good))  # fmt: skip

    def close(self) -> None:
        self.sock.close()


_OPENAI_BODY = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "four"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
})  # fmt: skip
_ANTHROPIC_BODY = orjson.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
    "content": [{"type": "text", "text": "four"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 1},
})  # fmt: skip


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_truncated_200_body_is_retried_like_a_dropped_connection(loopback_models, monkeypatch, transport, provider):
    server = _TruncatingServer(_OPENAI_BODY if provider == "openai" else _ANTHROPIC_BODY)
    try:
        base = f"http://127.0.0.1:{server.port}" + ("/v1" if provider == "openai" else "")
        loopback_models.config.update_config(
            "model_registry", {"providers": {provider: {"transport": transport, "base_url": base}}}
        )
        model_id = OPENAI if provider == "openai" else ANTHROPIC
        response = loopback_models.service.invoke_model(model_id, "What is 2 + 2?")
        assert response.text == "four" and response.attempts == 2 and server.count == 2
        assert response.usage.input_tokens == 5 and response.usage.output_tokens == 1
        server.cut = 10
        loopback_models.config.update_config("model_registry", {"max_retries": 0})
        with pytest.raises(ProviderConnectionError) as err:
            loopback_models.service.invoke_model(model_id, "What is 2 + 3?")
        assert err.value.retryable
    finally:
        server.close()


def test_keep_alive_pool_headers_and_query_on_the_wire(loopback_models):
    server = _TruncatingServer(_OPENAI_BODY, cut=0)
    try:
        options = {"default_headers": {"X-Team": "evals"}, "default_query": {"api-version": "7"}}
        loopback_models.config.update_config("model_registry", {"providers": {"gateway": {
            "kind": "openai_compatible", "base_url": f"http://127.0.0.1:{server.port}/v1",
            "api_key": "sk-gateway-key-123", "options": options}}})  # fmt: skip
        adapter = loopback_models.service._route("gateway:some-model").adapter
        assert adapter._lean  # the default for an openai_compatible server
        for i in range(5):
            assert loopback_models.service.invoke_model("gateway:some-model", f"hi {i}").text == "four"
        assert server.count == 5 and server.connections == 1  # one keep-alive connection, reused
        head = server.heads[-1].lower()
        assert head.startswith("post /v1/chat/completions?api-version=7 http/1.1")
        assert "authorization: bearer sk-gateway-key-123" in head and "x-team: evals" in head
    finally:
        server.close()


def test_refused_connection_is_retryable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = _lean.LeanClient(f"http://127.0.0.1:{port}", {"authorization": "Bearer sk-secret-xyz"})

    async def go():
        try:
            await client.post("/x", {}, model_id="m", timeout=2)
        finally:
            await client.aclose()

    with pytest.raises(ProviderConnectionError) as err:
        asyncio.run(go())
    assert err.value.retryable and "sk-secret-xyz" not in str(err.value)


# -- the parsers and the status mapping -------------------------------------------------------------------

PARSERS = {"openai": (_lean.parse_openai, _OPENAI_BODY), "anthropic": (_lean.parse_anthropic, _ANTHROPIC_BODY)}
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
_keys = st.sampled_from(["choices", "message", "content", "usage", "type", "text", "model", "finish_reason",
                         "prompt_tokens", "input_tokens", "stop_reason", "index"])  # fmt: skip
_shaped = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.text(max_size=4) | st.just("text"),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)


def _parses_or_malformed(parse, body: bytes) -> None:
    try:
        result = parse(body, "m:x")
    except MalformedResponseError as exc:
        assert not exc.retryable and exc.model_id == "m:x"
        return
    assert isinstance(result.text, str)
    assert isinstance(result.input_tokens, int) and result.input_tokens >= 0
    assert isinstance(result.output_tokens, int) and result.output_tokens >= 0


@pytest.mark.parametrize("provider", list(PARSERS))
def test_parsers_read_the_wire_format(provider):
    parse, body = PARSERS[provider]
    result = parse(body, "m:x")
    assert (result.text, result.input_tokens, result.output_tokens) == ("four", 5, 1)
    assert result.finish_reason in ("stop", "end_turn") and result.raw_model


@pytest.mark.parametrize("provider", list(PARSERS))
def test_every_truncation_of_a_body_is_a_typed_error(provider):
    parse, body = PARSERS[provider]
    for cut in range(len(body)):
        with pytest.raises(MalformedResponseError):
            parse(body[:cut], "m:x")


@pytest.mark.parametrize("provider", list(PARSERS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | _json.map(json.dumps).map(str.encode) | _shaped.map(orjson.dumps))
def test_fuzzed_bodies_parse_or_raise_malformed(provider, data):
    _parses_or_malformed(PARSERS[provider][0], data)


@pytest.mark.parametrize("provider", list(PARSERS))
@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 10_000), junk=st.binary(max_size=20))
def test_fuzzed_truncated_and_corrupted_bodies(provider, cut, junk):
    parse, body = PARSERS[provider]
    cut %= len(body) + 1
    _parses_or_malformed(parse, body[:cut] + junk)


@pytest.mark.parametrize(
    ("status", "body", "kind", "retryable"),
    [
        (429, b'{"error":{"message":"slow down","type":"requests"}}', RateLimitError, True),
        (500, b"oops", ProviderError, True),
        (529, b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}', ProviderError, True),
        (408, b"", ProviderError, True),
        (400, b'{"error":{"message":"x","code":"context_length_exceeded"}}', ContextLengthExceededError, False),
        (404, b'{"error":{"message":"no such model"}}', ModelNotFoundError, False),
        (401, b'{"error":{"message":"bad key"}}', ProviderError, False),
    ],
)
def test_status_mapping_matches_the_sdk_path(status, body, kind, retryable):
    error = _lean.map_status(status, body, {"retry-after-ms": "250"}, "m:x")
    assert type(error) is kind and getattr(error, "retryable", False) == retryable
    if retryable:
        assert error.retry_after == 0.25 and error.status_code == status


@settings(max_examples=200, deadline=None)
@given(status=st.integers(400, 599), body=st.binary(max_size=100) | _json.map(json.dumps).map(str.encode))
def test_fuzzed_error_bodies_map_to_typed_errors(status, body):
    error = _lean.map_status(status, body, {}, "m:x")
    assert isinstance(error, ProviderError | ModelNotFoundError)
    validation = status >= 500 and is_request_validation_error(str(error))
    assert error.retryable == ((status >= 500 and not validation) or status in (408, 429))


def test_a_5xx_validation_body_is_not_retryable_on_its_own():
    """llama-cpp-python's 500 wrapping a pydantic validation error: the same request fails the
    same way, so map_status says so itself (the SDK path agrees without the service's help)."""
    from ember.testing import _wire

    response = _wire.llama_cpp_validation_error("response_format.type", "json_schema", "'text' or 'json_object'")
    error = _lean.map_status(response.status, response.body, {"retry-after": "3"}, "m:x")
    assert type(error) is ProviderError and error.status_code == 500
    assert not error.retryable and error.retry_after is None
    assert "response_format" in str(error)
    assert _lean.map_status(500, b'{"error":{"message":"boom"}}', {}, "m:x").retryable


# -- streams: the SSE parser and the two decoders ---------------------------------------------------------


def _sse_body(provider: str, text: str = "The sky is clear") -> bytes:
    """A whole streamed answer, as the loopback server sends it."""
    from ember.testing import _wire
    from ember.testing._answer import Completion

    request = types.SimpleNamespace(index=0, model="m", stream=True, body={"stream_options": {"include_usage": True}})

    completion = Completion(text=text, prompt_tokens=9, completion_tokens=4, finish="end", stop_sequence=None)
    make = _wire.openai_completion if provider == "openai" else _wire.anthropic_message
    args = (request, completion, 0) if provider == "openai" else (request, completion)
    return b"".join(make(*args).events)


_DECODERS = {"openai": _lean.OpenAIStreamDecoder, "anthropic": _lean.AnthropicStreamDecoder}


def _decode(provider: str, chunks) -> tuple[list[str], object]:
    """What LeanClient.stream + stream_result make of ``chunks`` (a body that ended cleanly)."""
    parser, decoder = _lean.SSEParser(), _DECODERS[provider]("m:x")
    deltas = []
    events = [e for chunk in chunks for e in parser.feed(chunk)]  # an unterminated last event is dropped
    for name, data in events:
        if (delta := decoder.feed(name, data)) is not None:
            assert delta
            deltas.append(delta)
    return deltas, decoder.result()


@pytest.mark.parametrize("provider", list(_DECODERS))
def test_stream_decoders_read_the_wire_format_split_anywhere(provider):
    body = _sse_body(provider)
    whole, result = _decode(provider, [body])
    assert "".join(whole) == result.text == "The sky is clear" and len(whole) == 4
    assert (result.input_tokens, result.output_tokens, result.raw_model) == (9, 4, "m")
    assert result.finish_reason in ("stop", "end_turn")
    for cut in range(len(body)):  # any split into two reads gives the same answer
        deltas, again = _decode(provider, [body[:cut], body[cut:]])
        assert deltas == whole and again == result
    crlf, _ = _decode(provider, [body.replace(b"\n", b"\r\n")])
    assert crlf == whole


@pytest.mark.parametrize("provider", list(_DECODERS))
def test_every_truncation_of_a_stream_is_a_retryable_connection_error(provider):
    body = _sse_body(provider)
    for cut in range(len(body) - 1):  # the last event is never complete
        with pytest.raises(ProviderConnectionError) as err:
            _decode(provider, [body[:cut]])
        assert err.value.retryable


def test_sse_parser_details():
    parser = _lean.SSEParser()
    assert parser.feed(b": keep-alive\n\nevent: a\ndata: 1\ndata:2\nid: 7\nretry: 5\n\ndata: x") == [("a", b"1\n2")]
    assert parser.pending and parser.feed(b"\n\n") == [(None, b"x")] and not parser.pending
    assert parser.feed(b"event: lonely\n\n") == [] and not parser.pending  # an event with no data is none


@pytest.mark.parametrize(("provider", "event"), [
    ("openai", b'data: {"error":{"message":"boom","type":"server_error"}}\n\n'),
    ("anthropic", b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'),
])
def test_an_error_event_mid_stream_is_typed(provider, event):
    with pytest.raises(ProviderError) as err:
        _decode(provider, [event])
    assert err.value.retryable and type(err.value) is ProviderError
    with pytest.raises(ProviderError) as err:
        _decode(provider, [event.replace(b"server_error", b"invalid_request_error")
                           .replace(b"overloaded_error", b"invalid_request_error")])
    assert not err.value.retryable


def _decodes_or_typed(provider, chunks) -> None:
    try:
        deltas, result = _decode(provider, chunks)
    except MalformedResponseError as exc:
        assert not exc.retryable and exc.model_id == "m:x"
        return
    except ProviderConnectionError as exc:  # ended before [DONE] / message_stop
        assert exc.retryable and exc.model_id == "m:x"
        return
    except (ProviderError, RateLimitError) as exc:  # an error event
        assert exc.model_id == "m:x"
        return
    assert "".join(deltas) == result.text
    assert isinstance(result.input_tokens, int) and result.input_tokens >= 0
    assert isinstance(result.output_tokens, int) and result.output_tokens >= 0


_event_names = st.sampled_from(["message_start", "content_block_delta", "message_delta", "message_stop", "error",
                                "ping"])  # fmt: skip
_fuzz_event = st.builds(
    lambda name, data, named: (b"event: " + name.encode() + b"\n" if named else b"") + b"data: " + data + b"\n\n",
    _event_names, st.binary(max_size=40) | _shaped.map(orjson.dumps) | st.just(b"[DONE]"), st.booleans(),
)


@pytest.mark.parametrize("provider", list(_DECODERS))
@settings(max_examples=300, deadline=None)
@given(events=st.lists(_fuzz_event | st.binary(max_size=30), max_size=6), split=st.integers(0, 500))
def test_fuzzed_streams_decode_or_raise_typed(provider, events, split):
    body = b"".join(events)
    split %= len(body) + 1
    _decodes_or_typed(provider, [body[:split], body[split:]])


@pytest.mark.parametrize("provider", list(_DECODERS))
@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 10_000), junk=st.binary(max_size=20), split=st.integers(0, 10_000))
def test_fuzzed_truncated_and_corrupted_streams(provider, cut, junk, split):
    body = _sse_body(provider)
    body = body[: cut % (len(body) + 1)] + junk
    split %= len(body) + 1
    _decodes_or_typed(provider, [body[:split], body[split:]])


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_stream_cut_on_the_wire_is_retried_on_the_lean_transport(loopback_models, provider):
    body = _sse_body(provider, "four")  # one delta: half the body is before it
    server = _TruncatingServer(body)
    try:
        base = f"http://127.0.0.1:{server.port}" + ("/v1" if provider == "openai" else "")
        loopback_models.config.update_config(
            "model_registry", {"providers": {provider: {"transport": "lean", "base_url": base}}}
        )
        model_id = OPENAI if provider == "openai" else ANTHROPIC
        *deltas, response = list(loopback_models.service.stream(model_id, "What is 2 + 2?"))
        assert deltas == ["four"] and response.attempts == 2 and server.count == 2
        assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 4)
        assert "accept: text/event-stream" in server.heads[-1].lower()
        server.cut, end = 0, body.rindex(b"data:")
        server.good = body[:end]  # complete per Content-Length, but without [DONE] / message_stop
        loopback_models.config.update_config("model_registry", {"max_retries": 0})
        with pytest.raises(ProviderError) as err:  # the delta came first: the stream is interrupted
            list(loopback_models.service.stream(model_id, "What is 2 + 3?"))
        assert isinstance(err.value.__cause__, ProviderConnectionError)
    finally:
        server.close()


def test_transport_config_and_defaults(loopback_models):
    from ember.config import ConfigError

    with pytest.raises((ConfigError, ValueError)):
        loopback_models.config.update_config("model_registry", {"providers": {"openai": {"transport": "fast"}}})
    assert _lean.default_transport("openai", None) == "sdk"
    assert _lean.default_transport("anthropic", "http://localhost:1") == "sdk"
    assert _lean.default_transport("openai_compatible", "http://localhost:8000/v1") == "lean"
    assert _lean.default_transport("openai_compatible", "https://api.openai.com/v1") == "sdk"
    assert _lean.lean_body({"a": 1, "extra_body": {"b": 2}}) == {"a": 1, "b": 2}
