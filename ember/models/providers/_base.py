"""The provider contract, and the registry that makes a new provider one file.

A provider adapter owns everything about talking to one backend: its SDK client, its wire
format, and the mapping of its failures onto Ember's typed errors. It does *not* retry,
rate-limit, cache or price: :class:`~ember.models.ModelService` does that once, for all
providers, so the budget is shared and the behaviour is the same everywhere.

Writing a provider::

    from ember.models.providers import Provider, register_provider

    @register_provider
    class EchoProvider(Provider):
        name = "echo"
        requires_key = False

        async def acomplete(self, request):
            text = request.messages[-1].content
            return ProviderResult(text=text, input_tokens=len(text.split()), output_tokens=len(text.split()))

after which ``service("echo:anything", "hi")`` works. Adapters are created and used on
Ember's I/O event loop (see :mod:`ember._runtime._loop`), so an SDK's async client is bound
to one loop for its whole life.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import threading
from collections.abc import AsyncIterator
from typing import ClassVar

from pydantic import SecretStr

from ember.models._types import STRUCTURED_OUTPUT_FORMS, ChatRequest, ProviderResult, StructuredOutput

__all__ = [
    "Provider", "ProviderSettings", "client_options", "register_provider", "provider_class", "known_provider_kinds",
]


@dataclasses.dataclass(frozen=True)
class ProviderSettings:
    """Resolved connection settings for one provider (config and environment merged).

    ``name`` is how model ids refer to it (``together`` in ``together:llama-3``); ``kind`` is
    the adapter class that speaks to it (``openai_compatible``). The key is a ``SecretStr``
    so that neither repr nor str of these settings can show it. ``options`` are the
    provider's config ``options`` with their values revealed for the adapter's use (e.g.
    ``default_headers`` that carry a credential), so they are left out of the repr.
    """

    name: str
    kind: str
    api_key: SecretStr | None = None
    base_url: str | None = None
    timeout: float = 60.0
    api_key_env: str | None = None
    options: dict = dataclasses.field(default_factory=dict, repr=False)
    #: ``"sdk"`` or ``"lean"`` (see :mod:`._lean`); ``None``: the adapter's default for its kind and URL.
    transport: str | None = None
    #: Keep-alive connections a lean transport keeps: the provider's concurrency limit.
    max_connections: int | None = None


def client_options(options: dict) -> dict:
    """The ``default_headers`` / ``default_query`` among a provider's options, as SDK client arguments."""
    chosen = {}
    for name in ("default_headers", "default_query"):
        value = options.get(name)
        if value:
            chosen[name] = {str(k): str(v) for k, v in dict(value).items()}
    return chosen


class Provider(abc.ABC):
    """Base class of provider adapters; subclasses set ``name`` and implement ``acomplete``."""

    name: ClassVar[str]
    #: Environment variable the official SDK reads for the key (named in errors).
    api_key_env: ClassVar[str | None] = None
    #: Environment variable the official SDK reads for the base URL.
    base_url_env: ClassVar[str | None] = None
    requires_key: ClassVar[bool] = True
    #: Whether ``response_format`` (structured output) is enforced by the backend itself.
    supports_structured_output: ClassVar[bool] = False
    #: The best structured-output form the backend is assumed to accept: ``"json_schema"``
    #: (a named JSON schema), ``"json_object"`` (JSON mode, with the schema beside it where
    #: the server takes one) or ``"none"`` (the service asks for JSON in the prompt and
    #: validates locally). ``None``: ``"json_schema"`` if ``supports_structured_output``,
    #: else ``"none"``. A provider's config ``structured_output:`` overrides it.
    structured_output: ClassVar[StructuredOutput | None] = None
    #: The forms this adapter can send, best first (it reads ``ChatRequest.structured_output``).
    #: When a server rejects one, the service downgrades to the next, once per process (see
    #: :class:`~ember.models.ModelService`). ``None``: the declared form alone (no negotiation).
    structured_output_forms: ClassVar[tuple[StructuredOutput, ...] | None] = None
    #: Request timeout when config sets none (``None``: the registry's ``default_timeout``).
    default_timeout: ClassVar[float | None] = None

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def acomplete(self, request: ChatRequest) -> ProviderResult:
        """Send one request; raise :mod:`ember.models._errors` types on failure.

        Map transient failures (429, 5xx, timeouts, dropped connections) to errors with
        ``retryable=True`` (and ``retry_after`` when the server said so); the service retries.
        """

    @classmethod
    def structured_output_ladder(cls, start: StructuredOutput | None = None) -> tuple[StructuredOutput, ...]:
        """The forms to try, best first: from ``start`` (config's override, else the declared
        form) down through the forms this adapter can send. The first is always ``start``."""
        declared = cls.structured_output or ("json_schema" if cls.supports_structured_output else "none")
        first = start or declared
        forms = cls.structured_output_forms or (declared,)
        rank = STRUCTURED_OUTPUT_FORMS.index(first)
        return (first, *(f for f in forms if STRUCTURED_OUTPUT_FORMS.index(f) > rank))

    async def astream(self, request: ChatRequest) -> AsyncIterator[str | ProviderResult]:
        """Stream one request: yield text deltas (``str``), then exactly one :class:`ProviderResult`.

        The contract every adapter's ``astream`` keeps (the service relies on it):

        - Deltas are non-empty strings whose concatenation is the final result's ``text``;
          the :class:`ProviderResult` is the last item and carries the exact usage (OpenAI:
          ``stream_options={"include_usage": True}``; Anthropic: ``message_start`` /
          ``message_delta``) and the finish reason.
        - Failures raise the same typed errors as :meth:`acomplete`, ``retryable`` where a
          retry could succeed; this includes a connection dropped mid-body (map the transport's
          error, e.g. ``httpx.TransportError``, to a retryable
          :class:`~ember.models.ProviderConnectionError`). The service retries only before
          the first delta; after it, any error becomes a
          :class:`~ember.models.StreamInterruptedError`.
        - The HTTP response is closed in a ``finally`` (or ``async with``): the service
          closes the generator (``aclose()``) or cancels the task running it when the
          consumer stops early, and that must close the connection at once.
        - The service applies ``request.timeout`` to the wait for each item, not to the
          whole stream; the adapter sets no overall deadline of its own.

        This default is for adapters without streaming: it calls :meth:`acomplete` and
        yields the whole text as one delta.
        """
        result = await self.acomplete(request)
        if result.text:
            yield result.text
        yield result

    def describe_model(self, model_name: str) -> dict:
        """Facts the provider knows about a model absent from the catalogue (e.g. context size)."""
        return {}

    async def aclose(self) -> None:  # noqa: B027 - optional hook: adapters without clients keep it
        """Release clients; called on Ember's I/O loop at shutdown."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.settings.name!r}, base_url={self.settings.base_url!r})"


_registry: dict[str, type[Provider]] = {}
_registry_lock = threading.Lock()
#: Built-in adapters, imported on first use so that ``import ember`` loads no SDK.
_BUILTIN_MODULES = {
    "openai": "ember.models.providers.openai",
    "openai_compatible": "ember.models.providers.openai",
    "anthropic": "ember.models.providers.anthropic",
    "local": "ember.models.providers.local",
}


def register_provider(cls: type[Provider]) -> type[Provider]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} must set a class attribute 'name'")
    with _registry_lock:
        _registry[cls.name] = cls
    return cls


def provider_class(kind: str) -> type[Provider] | None:
    """The adapter class registered as ``kind``, importing a built-in one on first use."""
    cls = _registry.get(kind)
    if cls is None and kind in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[kind])
        cls = _registry.get(kind)
    return cls


def known_provider_kinds() -> set[str]:
    return set(_registry) | set(_BUILTIN_MODULES)
