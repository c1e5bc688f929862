"""Response bodies in each provider's real wire format, success and failure alike.

The point is that the official SDKs cannot tell the loopback server from the real API: a
429 becomes ``openai.RateLimitError``, a stream accumulates into the same final message,
and ``usage`` lands where the SDK looks for it. Shapes follow the public API references.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ember.testing._answer import Completion
from ember.testing._faults import Fault
from ember.testing._http import Response
from ember.testing._request import LoopbackRequest, Provider

_PIECES = re.compile(r"\s*\S+|\s+")  # stream deltas: one word each, with its leading space
_OPENAI_FINISH = {"end": "stop", "stop_sequence": "stop", "length": "length"}
_ANTHROPIC_STOP = {"end": "end_turn", "stop_sequence": "stop_sequence", "length": "max_tokens"}
# Error "type" by status where it is not the default (5xx: server/api error, 4xx: invalid request).
_OPENAI_ERROR_TYPES = {429: "requests"}
_ANTHROPIC_ERROR_TYPES = {404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}
_MALFORMED = {
    "openai": b'{"id":"chatcmpl-loopback","object":"chat.completion","choices":[{"index":0,"message":{"content":"',
    "anthropic": b'{"id":"msg_loopback","type":"message","content":[{"type":"text","text":"',
}
_MALFORMED_STREAM = {
    "openai": (
        b'data: {"id":"chatcmpl-loopback","object":"chat.completion.chunk","choices":[{\n\n',
        b"data: [DONE]\n\n",
    ),
    "anthropic": (b'event: message_start\ndata: {"type":"message_start","message":{"id":\n\n',),
}


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one shared encoder: json.dumps(separators=) builds one per call


def _json(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def openai_completion(request: LoopbackRequest, completion: Completion, created: int) -> Response:
    """A ``chat.completion``, or its ``chat.completion.chunk`` stream ending in ``[DONE]``."""
    usage = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }
    head = {
        "id": f"chatcmpl-loopback-{request.index}",
        "created": created,
        "model": request.model,
        "system_fingerprint": "fp_loopback",
    }
    finish = _OPENAI_FINISH[completion.finish]
    if not request.stream:
        message = {"role": "assistant", "content": completion.text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return Response(200, _json({**head, "object": "chat.completion", "choices": [choice], "usage": usage}))

    with_usage = bool((request.body.get("stream_options") or {}).get("include_usage"))
    chunk_head = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**chunk_head, "choices": [choice], **({"usage": None} if with_usage else {})})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in _PIECES.findall(completion.text)]
    events.append(chunk({}, finish))
    if with_usage:
        events.append(_sse({**chunk_head, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return Response(200, content_type="text/event-stream", events=tuple(events))


def anthropic_message(request: LoopbackRequest, completion: Completion) -> Response:
    """A ``message``, or its event stream: message_start, content_block_start, ping,
    content_block_delta per word, content_block_stop, message_delta (with usage), message_stop."""
    stop = {"stop_reason": _ANTHROPIC_STOP[completion.finish], "stop_sequence": completion.stop_sequence}
    message = {"id": f"msg_loopback_{request.index}", "type": "message", "role": "assistant", "model": request.model}
    if not request.stream:
        usage = {"input_tokens": completion.prompt_tokens, "output_tokens": completion.completion_tokens}
        content = [{"type": "text", "text": completion.text}]
        return Response(200, _json({**message, "content": content, **stop, "usage": usage}))

    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": completion.prompt_tokens, "output_tokens": 0},
    }
    events = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _event("ping", {"type": "ping"}),
    ]
    events += [
        _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
        )
        for piece in _PIECES.findall(completion.text)
    ]
    events += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {"type": "message_delta", "delta": stop, "usage": {"output_tokens": completion.completion_tokens}},
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return Response(200, content_type="text/event-stream", events=tuple(events))


def models_list(provider: Provider, models: Sequence[str]) -> Response:
    """``GET /v1/models`` as the named provider lists them."""
    if provider == "openai":
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "ember-loopback"} for m in models]
        return Response(200, _json({"object": "list", "data": data}))
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"} for m in models]
    page = {
        "data": data,
        "has_more": False,
        "first_id": models[0] if models else None,
        "last_id": models[-1] if models else None,
    }
    return Response(200, _json(page))


def error(
    provider: Provider,
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """An error in the provider's format: OpenAI ``{"error": {message, type, param, code}}``,
    Anthropic ``{"type": "error", "error": {type, message}}``."""
    if provider == "openai":
        kind = _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    else:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
    return Response(status, _json(body), headers=headers)


def llama_cpp_validation_error(field: str, value: Any, expected: str) -> Response:
    """llama-cpp-python's answer to a body its pydantic model refuses: HTTP 500 (its error
    handler wraps FastAPI's ``RequestValidationError``) with the validation errors as text."""
    detail = {
        "type": "literal_error",
        "loc": ("body", *field.split(".")),
        "msg": f"Input should be {expected}",
        "input": value,
        "ctx": {"expected": expected},
    }
    body = {"error": {"message": repr([detail]), "type": "internal_server_error", "param": None, "code": None}}
    return Response(500, _json(body))


def fault_response(fault: Fault, provider: Provider, stream: bool) -> Response:
    """What a ``rate_limit``, ``server_error``, ``malformed`` or ``context_length`` fault sends."""
    if fault.kind == "rate_limit":
        seconds = fault.retry_after
        headers = (("retry-after", f"{seconds:g}"), ("retry-after-ms", str(round(seconds * 1000))))
        return error(
            provider, 429, "Rate limit reached (ember loopback fault).", code="rate_limit_exceeded", headers=headers
        )
    if fault.kind == "server_error":
        return error(provider, fault.status, "The server had an error while processing your request.")
    if fault.kind == "client_error":
        return error(provider, fault.status, fault.message or "Invalid request.")
    if fault.kind == "context_length":
        if provider == "openai":
            return error(
                provider,
                400,
                "This model's maximum context length is 128000 tokens. However, your "
                "messages resulted in 128001 tokens. Please reduce the length of the messages.",
                code="context_length_exceeded",
                param="messages",
            )
        return error(provider, 400, "prompt is too long: 200001 tokens > 200000 maximum")
    if fault.kind == "malformed":
        if stream:
            return Response(200, content_type="text/event-stream", events=_MALFORMED_STREAM[provider])
        return Response(200, _MALFORMED[provider])
    raise ValueError(f"a {fault.kind!r} fault has no response of its own")


def _sse(data: Any) -> bytes:
    return b"data: " + _json(data) + b"\n\n"


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _json(data) + b"\n\n"
