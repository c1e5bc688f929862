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
from typing import ClassVar

from pydantic import SecretStr

from ember.models._types import ChatRequest, ProviderResult

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
