"""The typed shape of Ember's configuration: one frozen pydantic model per section.

Every model forbids unknown keys, so a typo in a file is an error naming the key rather
than a setting that silently does nothing. Models are frozen because one validated
instance is shared by every reader of a configuration snapshot.

To add a setting, add a field to its section below; to add a section, add a model and a
field of :class:`EmberConfig`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import ItemsView, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator

from ember._runtime import register_secret
from ember._runtime._redact import clean_credential

__all__ = [
    "ProviderConfig",
    "ProvidersConfig",
    "ModelEntryConfig",
    "ModelEntryProviderConfig",
    "ModelEntryCostConfig",
    "ModelEntryRateLimitConfig",
    "ModelRegistryConfig",
    "reveal_secrets",
    "CacheConfig",
    "AppConfig",
    "DataConfig",
    "EmberConfig",
    "SECTIONS",
]

#: A path in which ``~`` means the user's home, as it does in a shell.
_UserPath = Annotated[Path, AfterValidator(Path.expanduser)]


class _Model(BaseModel):
    # Numbers become text in string fields: an environment value such as ``12345`` is
    # read as a number, but an API key or model name made of digits is still a string.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


# --- model_registry -------------------------------------------------------------------


def _clean_key(key: SecretStr | None) -> SecretStr | None:
    """Surrounding whitespace (a CRLF ``.env`` file's ``\\r``) goes; whitespace inside is an error.

    The value is registered for redaction, so it is masked in any later message or log line.
    """
    if key is None:
        return None
    stripped, problem = clean_credential(key.get_secret_value())
    if problem:
        raise ValueError(f"the API key {problem}; a key is one token, with nothing around or inside it")
    return SecretStr(stripped) if stripped else None


def _clean_url(url: str | None) -> str | None:
    if url is None:
        return None
    return url.strip() or None


#: Option names whose values are credentials (``api_key``, ``Authorization``, ``X-Auth-Token``, ...).
_SENSITIVE_NAME = re.compile(r"key|token|secret|passw|auth|credential|cookie|signature", re.IGNORECASE)
#: Option names whose every value goes on the wire beside the key (``default_headers``, ``default_query``).
_WIRE_MAPPING = re.compile(r"(headers|query)$", re.IGNORECASE)


def _mask_options(value: Any, *, mask: bool = False) -> Any:
    """Strings that may be credentials become ``SecretStr``: every value of a header or query
    mapping, and every value under a credential-like name (registered for redaction too)."""
    if isinstance(value, Mapping):
        masked = {}
        for name, item in value.items():
            sensitive = bool(_SENSITIVE_NAME.search(str(name)))
            masked[name] = _mask_options(item, mask=mask or sensitive or bool(_WIRE_MAPPING.search(str(name))))
            if sensitive:
                _register_all(item)
        return masked
    if isinstance(value, list | tuple):
        return [_mask_options(item, mask=mask) for item in value]
    if mask and isinstance(value, str):
        return SecretStr(value)
    return value


def _register_all(value: Any) -> None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        register_secret(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _register_all(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _register_all(item)


def reveal_secrets(value: Any) -> Any:
    """``value`` with every ``SecretStr`` inside it (e.g. provider ``options``) replaced by its text.

    For the code that puts options on the wire; never print the result.
    """
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return {name: reveal_secrets(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [reveal_secrets(item) for item in value]
    return value


class ProviderConfig(_Model):
    """How to reach one provider; unset fields fall back to the registry-wide defaults.

    ``kind`` names the adapter that speaks to it (``openai_compatible`` for a Together or
    vLLM endpoint); ``None`` means the adapter named like the provider. Every key set here
    is registered for redaction, so it is masked in any later message or log line too.

    ``max_concurrency``, ``rpm`` and ``tpm`` are one budget for the whole provider, shared
    by all its model ids (a model's own ``rate_limit`` applies within it).

    ``options`` go to the adapter (``default_headers`` and ``default_query`` to the SDK
    client). Values that may be credentials (every header and query value, anything under a
    name such as ``api_key`` or ``token``) are kept as ``SecretStr``, so no repr or dump of
    the configuration shows them; :func:`reveal_secrets` gives the plain values.
    """

    kind: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    #: Whether a missing key is an error. ``None``: the adapter decides (``openai`` and
    #: ``anthropic`` need one; ``openai_compatible`` does not, so an ``api_key_env`` whose
    #: variable is unset means "send no key", for a keyless local server).
    requires_key: bool | None = None
    base_url: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    #: ``sdk`` (the official client) or ``lean`` (Ember's asyncio HTTP/1.1 client + orjson, same typed errors; see
    #: ``ember.models.providers._lean``). ``None``: ``lean`` for ``openai_compatible`` servers
    #: other than the official APIs, ``sdk`` for the ``openai`` and ``anthropic`` kinds.
    transport: Literal["sdk", "lean"] | None = None
    #: How structured answers are asked for: ``json_schema``, ``json_object`` (JSON mode with
    #: the schema beside it) or ``none`` (through the prompt, validated locally). ``None``: the
    #: adapter's declaration, negotiated down once per process if the server rejects it.
    structured_output: Literal["json_schema", "json_object", "none"] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    _register_for_redaction = field_validator("api_key")(_clean_key)
    _strip_base_url = field_validator("base_url")(_clean_url)

    @field_validator("options")
    @classmethod
    def _mask_credentials(cls, options: dict[str, Any]) -> dict[str, Any]:
        return _mask_options(options)


class ProvidersConfig(_Model):
    """Providers by name: the built-in three, plus any other name (``providers.together``).

    Extra names are validated as :class:`ProviderConfig` and read by attribute like the
    built-in ones; :meth:`items` and :meth:`get` treat all of them alike.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, ProviderConfig] = Field(init=False)

    openai: ProviderConfig = Field(default_factory=ProviderConfig)
    anthropic: ProviderConfig = Field(default_factory=ProviderConfig)
    local: ProviderConfig = Field(default_factory=ProviderConfig)

    def _by_name(self) -> dict[str, ProviderConfig]:
        return {**{name: getattr(self, name) for name in type(self).model_fields}, **self.__pydantic_extra__}

    def items(self) -> ItemsView[str, ProviderConfig]:
        """Every configured provider, built-in ones first."""
        return self._by_name().items()

    def get(self, name: str, default: ProviderConfig | None = None) -> ProviderConfig | None:
        """The provider called ``name``, or ``default`` if none is configured."""
        return self._by_name().get(name, default)


# The entries of ``model_registry.models``: the fields of ``ember.models.ModelInfo`` (the
# models layer sits above this one, so the shape is restated here; a test keeps the two in
# step). Validated when the configuration is loaded, so a typo or a bad value is a
# ConfigError naming its key path, never a crash of whatever first lists the models.


class ModelEntryProviderConfig(_Model):
    """Per-model provider settings (``ProviderInfo``); unset fields come from the provider's config."""

    name: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None

    _register_for_redaction = field_validator("api_key")(_clean_key)
    _strip_base_url = field_validator("base_url")(_clean_url)


class ModelEntryCostConfig(_Model):
    """Price in USD per million tokens (``ModelCost``)."""

    input_cost_per_million: float | None = Field(default=None, ge=0)
    output_cost_per_million: float | None = Field(default=None, ge=0)


class ModelEntryRateLimitConfig(_Model):
    """This model's own limits (``RateLimit``), applied within its provider's budget."""

    max_concurrency: int | None = Field(default=None, ge=1)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)


class ModelEntryConfig(_Model):
    """One model's fields (``ModelInfo`` without ``id``, which is the entry's key).

    ``model_dump(exclude_unset=True, exclude_none=True)`` gives the keyword arguments of
    ``ModelInfo``; fields left out are filled from the bundled catalogue.
    """

    name: str | None = None
    api_name: str | None = None
    provider: ModelEntryProviderConfig | None = None
    cost: ModelEntryCostConfig | None = None
    context_window: int | None = Field(default=None, ge=1)
    rate_limit: ModelEntryRateLimitConfig | None = None


def _model_id(model_id: str) -> str:
    provider, sep, name = model_id.partition(":")
    if not sep or not provider or not name:
        raise ValueError("a model id must look like 'provider:name', e.g. 'openai:gpt-4o'")
    return model_id


class ModelRegistryConfig(_Model):
    """Providers, extra model entries, and the defaults of the call path (timeouts, retries).

    ``default_max_concurrency`` is each model id's own concurrency limit when neither its entry
    nor its provider sets one; a provider's ``max_concurrency`` is one budget shared by all its
    model ids.
    """

    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    #: Model id -> its ModelInfo fields; the registry registers them on discovery.
    models: dict[Annotated[str, AfterValidator(_model_id)], ModelEntryConfig] = Field(default_factory=dict)
    default_timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    default_max_concurrency: int = Field(default=64, ge=1)


# --- app ------------------------------------------------------------------------------


class CacheConfig(_Model):
    """The on-disk response cache: off unless asked for, so repeated samples stay independent."""

    enabled: bool = False
    directory: _UserPath = Field(default_factory=lambda: Path.home() / ".cache" / "ember")


class AppConfig(_Model):
    """Process-wide behaviour: logging, the model used when none is named, caching."""

    log_level: str = "WARNING"
    default_model: str = "local:smollm2-135m-instruct"
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.upper() not in logging.getLevelNamesMapping():
            raise ValueError("must be a logging level name: DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level.upper()


# --- data -----------------------------------------------------------------------------


class DataConfig(_Model):
    """Where datasets are stored."""

    data_dir: _UserPath = Field(default_factory=lambda: Path.home() / ".ember" / "data")
    #: Where benchmark files are prepared (array_record); None means ``<data_dir>/.prepared``.
    cache_dir: _UserPath | None = None


# --- the whole configuration ----------------------------------------------------------


class EmberConfig(_Model):
    """All sections; ``config_manager.get_config(name)`` returns one of these fields."""

    model_registry: ModelRegistryConfig = Field(default_factory=ModelRegistryConfig)
    app: AppConfig = Field(default_factory=AppConfig)
    data: DataConfig = Field(default_factory=DataConfig)


SECTIONS: frozenset[str] = frozenset(EmberConfig.model_fields)
