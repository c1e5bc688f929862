"""Anthropic's messages API via the official SDK.

Structured output uses the API's ``output_config.format`` JSON schema; the answer is
validated by the service like every other provider's. The current SDK no longer lists
``temperature`` / ``top_p`` as arguments, so they travel in ``extra_body`` (the API still
takes them).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from ember.models._errors import MalformedResponseError, ProviderConnectionError
from ember.models._types import ChatRequest, ProviderResult
from ember.models.providers import _lean
from ember.models.providers._base import Provider, client_options, register_provider
from ember.models.providers._sdk_errors import map_sdk_error, transport_errors

_TRANSPORT_ERRORS = transport_errors()
__all__ = ["AnthropicProvider"]

#: Anthropic requires max_tokens; this is used when the caller gives none.
DEFAULT_MAX_TOKENS = 1024
#: The ``anthropic-version`` header the lean transport sends (the SDK sends the same).
ANTHROPIC_VERSION = "2023-06-01"


@register_provider
class AnthropicProvider(Provider):
    name = "anthropic"
    api_key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    supports_structured_output = True

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self._lean = _lean.transport_of(settings) == "lean"
        self._lean_client: _lean.LeanClient | None = None
        self._sdk = None
        if not self._lean:  # a lean provider never loads the SDK
            import anthropic  # here, on the caller's thread: a first import takes seconds and must not stall the I/O loop

            self._sdk = anthropic
        self._sdk_client = None

    def _client(self):
        if self._sdk_client is None:
            if self._sdk is None:
                import anthropic

                self._sdk = anthropic
            self._sdk_client = self._sdk.AsyncAnthropic(
                api_key=self.settings.api_key.get_secret_value() if self.settings.api_key else None,
                base_url=self.settings.base_url,
                max_retries=0,
                timeout=self.settings.timeout,
                **client_options(self.settings.options),
            )
        return self._sdk_client

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.model_name,
            "messages": [{"role": m.role, "content": m.content} for m in request.turns],
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        optional = {"system": request.system, "stop_sequences": list(request.stop) if request.stop else None}
        payload.update({k: v for k, v in optional.items() if v is not None})
        if request.output_schema is not None:
            payload["output_config"] = {"format": {"type": "json_schema", "schema": dict(request.output_schema)}}
        sampling = {"temperature": request.temperature, "top_p": request.top_p}
        extra_body = {k: v for k, v in sampling.items() if v is not None} | dict(request.extra)
        if extra_body:
            payload["extra_body"] = extra_body
        return payload

    def _lean_transport(self) -> _lean.LeanClient:
        if self._lean_client is None:
            key = self.settings.api_key
            auth = {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": key.get_secret_value()} if key else {})}
            self._lean_client = _lean.client_for(self.settings, self.base_url_env, "https://api.anthropic.com", auth)
        return self._lean_client

    async def acomplete(self, request: ChatRequest) -> ProviderResult:
        if self._lean:
            body = await self._lean_transport().post(
                "/v1/messages", _lean.lean_body(self._payload(request)),
                model_id=request.model_id, timeout=request.timeout,
            )
            return _lean.parse_anthropic(body, request.model_id)
        client, sdk = self._client(), self._sdk
        try:
            response = await client.messages.create(**self._payload(request), timeout=request.timeout)
        except (sdk.AnthropicError, json.JSONDecodeError) as exc:
            raise map_sdk_error(exc, sdk, request.model_id) from None
        blocks = getattr(response, "content", None)
        texts = [block.text for block in blocks or () if getattr(block, "type", None) == "text"]
        if not texts:
            raise MalformedResponseError("response has no text content", snippet=str(response), model_id=request.model_id)
        return ProviderResult(
            text="".join(texts),
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            finish_reason=response.stop_reason,
            raw_model=response.model,
        )

    async def astream(self, request: ChatRequest) -> AsyncIterator[str | ProviderResult]:
        """SSE via ``messages.create(stream=True)``: text from ``content_block_delta``, input
        tokens from ``message_start``, output tokens and stop reason from ``message_delta``;
        the contract is :meth:`Provider.astream`'s. On the lean transport, SSE over Ember's own HTTP client."""
        if self._lean:
            payload = _lean.lean_body(self._payload(request))
            payload["stream"] = True
            events = self._lean_transport().stream("/v1/messages", payload, model_id=request.model_id)
            async with contextlib.aclosing(_lean.stream_result(events, _lean.AnthropicStreamDecoder(request.model_id))) as items:
                async for item in items:  # closing this generator closes the response at once
                    yield item
            return
        client, sdk = self._client(), self._sdk
        try:
            stream = await client.messages.create(**self._payload(request), stream=True, timeout=request.timeout)
        except (sdk.AnthropicError, json.JSONDecodeError) as exc:
            raise map_sdk_error(exc, sdk, request.model_id) from None
        parts: list[str] = []
        input_tokens = output_tokens = stop = model = None
        try:
            async with stream:  # closes the HTTP response however the loop ends (cancel, aclose, error)
                async for event in stream:
                    kind = getattr(event, "type", None)
                    if kind == "message_start":
                        model = event.message.model
                        input_tokens = event.message.usage.input_tokens
                        output_tokens = event.message.usage.output_tokens
                    elif kind == "content_block_delta" and getattr(event.delta, "type", None) == "text_delta":
                        if event.delta.text:
                            parts.append(event.delta.text)
                            yield event.delta.text
                    elif kind == "message_delta":
                        stop = event.delta.stop_reason or stop
                        usage = event.usage
                        output_tokens = usage.output_tokens
                        if getattr(usage, "input_tokens", None) is not None:
                            input_tokens = usage.input_tokens
        except (sdk.AnthropicError, json.JSONDecodeError) as exc:
            raise map_sdk_error(exc, sdk, request.model_id) from None
        except _TRANSPORT_ERRORS as exc:  # the body cut short: the SDK does not wrap errors mid-stream
            raise ProviderConnectionError(
                f"stream broken: {type(exc).__name__}: {exc}", model_id=request.model_id, retryable=True
            ) from None
        if input_tokens is None or stop is None:
            raise MalformedResponseError(
                "stream ended before message_start and message_delta", snippet="".join(parts),
                model_id=request.model_id,
            )
        yield ProviderResult(
            text="".join(parts),
            input_tokens=input_tokens,
            output_tokens=output_tokens or 0,
            finish_reason=stop,
            raw_model=model,
        )

    async def aclose(self) -> None:
        if self._lean_client is not None:
            await self._lean_client.aclose()
        if self._sdk_client is not None:
            await self._sdk_client.close()
