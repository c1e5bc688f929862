"""OpenAI, and any OpenAI-compatible endpoint (vLLM, Ollama, Together, ...), via the official SDK.

``openai_compatible`` is configured by name, base URL and key variable::

    # ember.yaml
    model_registry:
      providers:
        together: {kind: openai_compatible, base_url: https://api.together.xyz/v1, api_key_env: TOGETHER_API_KEY}

after which ``together:meta-llama/Llama-3-8b-chat-hf`` is a valid model id.

``options: {default_headers: {...}, default_query: {...}}`` in a provider's config go to the
SDK client (e.g. a gateway's own ``Authorization`` header); config dumps mask their values.

The SDK's own retries are off (``max_retries=0``): the service retries once, uniformly, with
the shared budget. The transport stays inside this adapter, so a leaner HTTP path for fast
self-hosted endpoints can replace the SDK here without touching the service.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from ember.models._errors import MalformedResponseError
from ember.models._types import ChatRequest, ProviderResult
from ember.models.providers._base import Provider, client_options, register_provider
from ember.models.providers._sdk_errors import map_sdk_error

__all__ = ["OpenAIProvider", "OpenAICompatibleProvider"]


@register_provider
class OpenAIProvider(Provider):
    name = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    supports_structured_output = True
    #: Newer OpenAI models reject ``max_tokens``; compatible servers may not know the new name.
    max_tokens_field = "max_completion_tokens"

    def __init__(self, settings) -> None:
        super().__init__(settings)
        import openai  # here, on the caller's thread: a first import takes seconds and must not stall the I/O loop

        self._sdk = openai
        self._sdk_client = None
        self._create_arguments: frozenset[str] = frozenset()

    def _client(self):
        if self._sdk_client is None:
            key = self.settings.api_key.get_secret_value() if self.settings.api_key else "not-needed"
            self._sdk_client = self._sdk.AsyncOpenAI(
                api_key=key,
                base_url=self.settings.base_url,
                max_retries=0,
                timeout=self.settings.timeout,
                **client_options(self.settings.options),
            )
            self._create_arguments = frozenset(inspect.signature(self._sdk_client.chat.completions.create).parameters)
        return self._sdk_client

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.model_name,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        optional = {
            "temperature": request.temperature,
            self.max_tokens_field: request.max_tokens,
            "stop": list(request.stop) if request.stop else None,
            "seed": request.seed,
            "top_p": request.top_p,
        }
        payload.update({k: v for k, v in optional.items() if v is not None})
        schema = request.output_schema
        if schema is not None:
            name = request.response_format.__name__ if request.response_format else schema.get("title", "answer")
            payload["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
        # Fields the SDK takes as arguments go as arguments; any other (a server's own, such
        # as vLLM's ``repetition_penalty``) goes in the JSON body, where the SDK would refuse it.
        body: dict[str, Any] = {}
        for name, value in request.extra.items():
            if name == "extra_body":
                body.update(value)
            elif name in self._create_arguments:
                payload[name] = value
            else:
                body[name] = value
        if body:
            payload["extra_body"] = body
        return payload

    async def acomplete(self, request: ChatRequest) -> ProviderResult:
        client, sdk = self._client(), self._sdk
        try:
            response = await client.chat.completions.create(**self._payload(request), timeout=request.timeout)
        except (sdk.OpenAIError, json.JSONDecodeError) as exc:
            raise map_sdk_error(exc, sdk, request.model_id) from None
        choices = getattr(response, "choices", None)
        if not choices or choices[0].message is None or choices[0].message.content is None:
            raise MalformedResponseError(
                "response has no message content", snippet=str(response), model_id=request.model_id
            )
        usage = response.usage
        return ProviderResult(
            text=choices[0].message.content,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choices[0].finish_reason,
            raw_model=response.model,
        )

    async def aclose(self) -> None:
        if self._sdk_client is not None:
            await self._sdk_client.close()


@register_provider
class OpenAICompatibleProvider(OpenAIProvider):
    """Any server speaking OpenAI's chat-completions API; needs a ``base_url``."""

    name = "openai_compatible"
    api_key_env = None
    base_url_env = None
    requires_key = False
    max_tokens_field = "max_tokens"
