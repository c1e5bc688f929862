"""The typed shape of Ember's configuration: one frozen pydantic model per section.

Every model forbids unknown keys, so a typo in a file is an error naming the key rather
than a setting that silently does nothing. Models are frozen because one validated
instance is shared by every reader of a configuration snapshot.

To add a setting, add a field to its section below; to add a section, add a model and a
field of :class:`EmberConfig`.
"""

from __future__ import annotations

import logging
from collections.abc import ItemsView
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator

from ember._runtime import register_secret

__all__ = [
    "ProviderConfig",
    "ProvidersConfig",
    "ModelRegistryConfig",
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


class ProviderConfig(_Model):
    """How to reach one provider; unset fields fall back to the registry-wide defaults.

    ``kind`` names the adapter that speaks to it (``openai_compatible`` for a Together or
    vLLM endpoint); ``None`` means the adapter named like the provider. Every key set here
    is registered for redaction, so it is masked in any later message or log line too.
    """

    kind: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    base_url: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("api_key")
    @classmethod
    def _register_for_redaction(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            register_secret(key.get_secret_value())
        return key


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


class ModelRegistryConfig(_Model):
    """Providers, extra model entries, and the defaults of the call path (timeouts, retries)."""

    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    #: Model id -> ModelInfo fields; the models layer validates them when it registers them.
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
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
