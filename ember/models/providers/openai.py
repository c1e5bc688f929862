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

import contextlib
import inspect
import json
from collections.abc import AsyncIterator
from typing import Any

from ember.models._errors import MalformedResponseError, ProviderConnectionError
from ember.models._types import ChatRequest, ProviderResult
from ember.models.providers import _lean
from ember.models.providers._base import Provider, client_options, register_provider
from ember.models.providers._sdk_errors import map_sdk_error, transport_errors

_TRANSPORT_ERRORS = transport_errors()
__all__ = ["OpenAIProvider", "OpenAICompatibleProvider"]


def _openai_host(base_url: str | None) -> bool:
    """Whether ``base_url`` is OpenAI's API (no URL: the SDK's default) or Azure OpenAI."""
    if not base_url:
        return True
    from urllib.parse import urlsplit

    host = (urlsplit(base_url).hostname or "").lower()
    return host == "openai.com" or host.endswith((".openai.com", ".openai.azure.com"))


@register_provider
class OpenAIProvider(Provider):
    name = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    supports_structured_output = True
    #: OpenAI's API takes a named JSON schema; no negotiation (its 400s about a schema are the schema's fault).
    structured_output = "json_schema"
    #: Newer OpenAI models reject ``max_tokens``; compatible servers may not know the new name
    #: (llama.cpp ignores it): on any other host the adapter sends ``max_tokens`` (see ``__init__``).
    max_tokens_field = "max_completion_tokens"

    def __init__(self, settings) -> None:
        super().__init__(settings)
        # OpenAI's own hosts (and Azure's) get ``max_completion_tokens``; any other base URL is a
        # compatible server, which reads ``max_tokens``. Never both: OpenAI refuses a request with both.
        # ``options: {max_tokens_field: ...}`` in the provider's config overrides the choice.
        chosen = (settings.options or {}).get("max_tokens_field")
        if chosen in ("max_tokens", "max_completion_tokens"):
            self.max_tokens_field = chosen
        elif self.max_tokens_field == "max_completion_tokens" and not _openai_host(settings.base_url):
            self.max_tokens_field = "max_tokens"
        self._lean = _lean.transport_of(settings) == "lean"
        self._lean_client: _lean.LeanClient | None = None
        self._sdk = None
        if not self._lean:  # a lean provider never loads the SDK
            import openai  # here, on the caller's thread: a first import takes seconds and must not stall the I/O loop

            self._sdk = openai
        self._sdk_client = None
        self._create_arguments: frozenset[str] = frozenset()

    def _client(self):
        if self._sdk_client is None:
            if self._sdk is None:
                import openai

                self._sdk = openai
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
        form = request.structured_output or self.structured_output
        if schema is not None and form == "json_schema":
            name = request.response_format.__name__ if request.response_format else schema.get("title", "answer")
            payload["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
        elif schema is not None and form == "json_object":
            # JSON mode, with the schema beside it: llama.cpp's server constrains the answer
            # to it; a server that ignores ``schema`` still answers JSON, validated by the caller.
            payload["response_format"] = {"type": "json_object", "schema": dict(schema)}
        # "none": no response_format at all; the service asked for JSON in the prompt.
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

    def _lean_transport(self) -> _lean.LeanClient:
        if self._lean_client is None:
            key = self.settings.api_key
            auth = {"authorization": f"Bearer {key.get_secret_value()}"} if key else {}
            self._lean_client = _lean.client_for(self.settings, self.base_url_env, "https://api.openai.com/v1", auth)
        return self._lean_client

    async def acomplete(self, request: ChatRequest) -> ProviderResult:
        if self._lean:
            body = await self._lean_transport().post(
                "/chat/completions", _lean.lean_body(self._payload(request)),
                model_id=request.model_id, timeout=request.timeout,
            )
            return _lean.parse_openai(body, request.model_id)
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

    async def astream(self, request: ChatRequest) -> AsyncIterator[str | ProviderResult]:
        """SSE via the SDK (``stream=True``, ``stream_options.include_usage`` for exact usage);
        the contract is :meth:`Provider.astream`'s. On the lean transport, SSE over Ember's own HTTP client."""
        payload = self._payload(request)
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        if self._lean:
            events = self._lean_transport().stream(
                "/chat/completions", _lean.lean_body(payload), model_id=request.model_id
            )
            async with contextlib.aclosing(_lean.stream_result(events, _lean.OpenAIStreamDecoder(request.model_id))) as items:
                async for item in items:  # closing this generator closes the response at once
                    yield item
            return
        client, sdk = self._client(), self._sdk
        try:
            stream = await client.chat.completions.create(**payload, timeout=request.timeout)
        except (sdk.OpenAIError, json.JSONDecodeError) as exc:
            raise map_sdk_error(exc, sdk, request.model_id) from None
        parts: list[str] = []
        usage = finish = model = None
        try:
            async with stream:  # closes the HTTP response however the loop ends (cancel, aclose, error)
                async for chunk in stream:
                    model = getattr(chunk, "model", None) or model
                    if getattr(chunk, "usage", None) is not None:
                        usage = chunk.usage
                    for choice in getattr(chunk, "choices", None) or ():
                        if choice.finish_reason is not None:
                            finish = choice.finish_reason
                        delta = choice.delta.content if choice.delta is not None else None
                        if delta:
                            parts.append(delta)
                            yield delta
        except (sdk.OpenAIError, json.JSONDecodeError) as exc:
            raise map_sdk_error(exc, sdk, request.model_id) from None
        except _TRANSPORT_ERRORS as exc:  # the body cut short: the SDK does not wrap errors mid-stream
            raise ProviderConnectionError(
                f"stream broken: {type(exc).__name__}: {exc}", model_id=request.model_id, retryable=True
            ) from None
        if usage is None:
            raise MalformedResponseError(
                "stream ended without usage (the server ignored stream_options.include_usage)",
                snippet="".join(parts), model_id=request.model_id,
            )
        yield ProviderResult(
            text="".join(parts),
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            finish_reason=finish,
            raw_model=model,
        )

    async def aclose(self) -> None:
        if self._lean_client is not None:
            await self._lean_client.aclose()
        if self._sdk_client is not None:
            await self._sdk_client.close()


@register_provider
class OpenAICompatibleProvider(OpenAIProvider):
    """Any server speaking OpenAI's chat-completions API; needs a ``base_url``."""

    name = "openai_compatible"
    api_key_env = None
    base_url_env = None
    #: A compatible server may know only JSON mode (llama.cpp's: ``text`` or ``json_object`` +
    #: ``schema``) or neither: the service downgrades json_schema -> json_object -> none on a rejection.
    structured_output_forms = ("json_schema", "json_object", "none")
    requires_key = False
    max_tokens_field = "max_tokens"
