"""One chat request as the loopback server understood it, whichever provider sent it.

Responders see the OpenAI and the Anthropic formats through this one shape, so a scripted
answer is written once and works for both SDKs. The raw JSON body stays attached for
anything the common shape leaves out (tools, response formats, metadata).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Provider = Literal["openai", "anthropic"]


class InvalidRequest(Exception):
    """The body is not a request the provider would accept; answered with a 400."""


@dataclasses.dataclass(frozen=True, slots=True)
class LoopbackRequest:
    """A parsed chat request.

    ``messages`` are ``{"role", "content"}`` dicts with the content flattened to text (text
    blocks joined by newlines, other blocks dropped); an Anthropic ``system`` prompt comes
    first as a ``"system"`` message. ``index`` is the request's 0-based arrival order on
    the server, the same index faults are scheduled on.
    """

    provider: Provider
    model: str
    messages: list[dict[str, str]]
    temperature: float | None
    max_tokens: int | None
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    body: dict[str, Any]
    index: int

    @property
    def last_user_message(self) -> str:
        """Text of the last ``"user"`` message, or ``""`` when there is none."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema the request asks the answer to follow, or None.

        OpenAI: ``response_format.json_schema.schema`` (``type: json_schema``) or
        ``response_format.schema`` (``type: json_object`` with a schema, as llama.cpp's server
        takes it); Anthropic: ``output_config.format.schema``.
        """
        body = self.body
        if self.provider == "openai":
            form = body.get("response_format")
            if not isinstance(form, dict):
                return None
            inner = form.get("json_schema")
            schema = inner.get("schema") if form.get("type") == "json_schema" and isinstance(inner, dict) else None
            schema = form.get("schema") if form.get("type") == "json_object" else schema
        else:
            form = (body.get("output_config") or {}).get("format") if isinstance(body.get("output_config"), dict) else None
            schema = form.get("schema") if isinstance(form, dict) else None
        return schema if isinstance(schema, dict) else None


def parse_openai(body: Any, index: int) -> LoopbackRequest:
    """Read a ``POST /v1/chat/completions`` body."""
    _require_object(body)
    return LoopbackRequest(
        provider="openai",
        model=_model(body),
        messages=_messages(body),
        temperature=body.get("temperature"),
        max_tokens=_optional_int(body, "max_completion_tokens", body.get("max_tokens")),
        stop=_strings(body, "stop"),
        seed=body.get("seed"),
        stream=bool(body.get("stream")),
        body=body,
        index=index,
    )


def parse_anthropic(body: Any, index: int) -> LoopbackRequest:
    """Read a ``POST /v1/messages`` body; like the real API, ``max_tokens`` is required."""
    _require_object(body)
    if "max_tokens" not in body:
        raise InvalidRequest("max_tokens: Field required")
    messages = _messages(body)
    system = body.get("system")
    if system:
        messages.insert(0, {"role": "system", "content": _text(system)})
    return LoopbackRequest(
        provider="anthropic",
        model=_model(body),
        messages=messages,
        temperature=body.get("temperature"),
        max_tokens=_optional_int(body, "max_tokens", None),
        stop=_strings(body, "stop_sequences"),
        seed=None,
        stream=bool(body.get("stream")),
        body=body,
        index=index,
    )


def _require_object(body: Any) -> None:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required")
    return model


def _optional_int(body: dict[str, Any], key: str, default: Any) -> int | None:
    value = body.get(key, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidRequest(f"{key}: must be a non-negative integer, got {value!r}")
    return value


def _strings(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key) or ()
    value = (value,) if isinstance(value, str) else value
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest(f"{key}: must be a string or a list of strings")
    return tuple(value)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty list")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages.{i}: must be an object with a 'role'")
        parsed.append({"role": message["role"], "content": _text(message.get("content"))})
    return parsed


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            block["text"] for block in content if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    return ""
