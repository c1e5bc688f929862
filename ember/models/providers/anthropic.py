"""Anthropic's messages API via the official SDK.

Structured output uses the API's ``output_config.format`` JSON schema; the answer is
validated by the service like every other provider's. The current SDK no longer lists
``temperature`` / ``top_p`` as arguments, so they travel in ``extra_body`` (the API still
takes them).
"""

from __future__ import annotations

import json
from typing import Any

from ember.models._errors import MalformedResponseError
from ember.models._types import ChatRequest, ProviderResult
from ember.models.providers._base import Provider, client_options, register_provider
from ember.models.providers._sdk_errors import map_sdk_error

__all__ = ["AnthropicProvider"]

#: Anthropic requires max_tokens; this is used when the caller gives none.
DEFAULT_MAX_TOKENS = 1024


@register_provider
class AnthropicProvider(Provider):
    name = "anthropic"
    api_key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    supports_structured_output = True

    def __init__(self, settings) -> None:
        super().__init__(settings)
        import anthropic  # here, on the caller's thread: a first import takes seconds and must not stall the I/O loop

        self._sdk = anthropic
        self._sdk_client = None

    def _client(self):
        if self._sdk_client is None:
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

    async def acomplete(self, request: ChatRequest) -> ProviderResult:
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

    async def aclose(self) -> None:
        if self._sdk_client is not None:
            await self._sdk_client.close()
