"""From a :class:`ModelInfo` to a provider adapter, with settings resolved from config.

Settings come from the ``model_registry.providers.<name>`` config section (which already
folds in ``OPENAI_API_KEY``-style variables at the environment level), then the model's
own ``provider`` overrides. Adapters are cached per resolved settings, so all models of
one provider share one SDK client and its connection pool.

Keys and base URLs lose surrounding whitespace where they are resolved (a key read from a
CRLF ``.env`` file ends in ``\r``); a key with whitespace or control characters inside
raises :class:`~ember.models.InvalidCredentialsError` naming where it was read, never the
value. Provider ``options`` reach the adapter with their masked values revealed.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ember._runtime import install_log_redaction
from ember._runtime._redact import clean_credential
from ember.config import reveal_secrets
from ember.models._errors import InvalidCredentialsError, MissingCredentialsError, ProviderNotFoundError
from ember.models._info import ModelInfo
from ember.models.providers._base import Provider, ProviderSettings, known_provider_kinds, provider_class

if TYPE_CHECKING:
    from ember.config import ConfigManager, ProviderConfig

__all__ = ["ModelFactory"]


class ModelFactory:
    """Creates (and reuses) provider adapters for models."""

    def __init__(self, config_manager: ConfigManager) -> None:
        self._config_manager = config_manager
        self._adapters: dict[tuple, Provider] = {}
        self._lock = threading.Lock()
        install_log_redaction()

    def resolve_settings(self, model_info: ModelInfo) -> ProviderSettings:
        section = self._config_manager.get_config("model_registry")
        name = model_info.provider.name
        config = section.providers.get(name)
        kind = (config.kind if config and config.kind else None) or name
        cls = provider_class(kind)
        if cls is None:
            known = known_provider_kinds() | {n for n, _ in section.providers.items()}
            raise ProviderNotFoundError(model_info.id, name, known)
        key_env = (config.api_key_env if config else None) or cls.api_key_env
        api_key = self._api_key(model_info, config)
        # A key is required where the config says so (``requires_key``), else where the adapter
        # needs one: ``openai_compatible`` with an unset ``api_key_env`` sends none (a keyless server).
        requires_key = config.requires_key if config is not None and config.requires_key is not None else cls.requires_key
        if api_key is None and requires_key:
            raise MissingCredentialsError(
                name, key_env or f"{name.upper()}_API_KEY", f"model_registry.providers.{name}.api_key",
                model_id=model_info.id,
            )
        timeout = (config.timeout if config else None) or cls.default_timeout or section.default_timeout
        base_url = model_info.provider.base_url or (config.base_url if config else None)
        return ProviderSettings(
            name=name,
            kind=kind,
            api_key=api_key,
            base_url=base_url.strip() or None if base_url else None,
            timeout=timeout,
            api_key_env=key_env,
            options=reveal_secrets(dict(config.options)) if config else {},
            transport=config.transport if config else None,
            max_connections=(config.max_concurrency if config else None) or section.default_max_concurrency,
        )

    @staticmethod
    def _api_key(model_info: ModelInfo, config: ProviderConfig | None) -> SecretStr | None:
        """The key for ``model_info``, stripped of surrounding whitespace and checked.

        Looked up in the model's own ``provider.api_key``, the provider's config (which holds
        ``OPENAI_API_KEY``-style variables), then the provider's ``api_key_env`` variable. A
        key that can never be sent (whitespace or control characters inside) raises
        :class:`InvalidCredentialsError` naming where it was read, never its value.
        """
        name = model_info.provider.name
        env_var: str | None = None
        if model_info.provider.api_key is not None:
            secret, config_key = model_info.provider.api_key, f"model_registry.models.{model_info.id}.provider.api_key"
        elif config is not None and config.api_key is not None:
            secret, config_key = config.api_key, f"model_registry.providers.{name}.api_key"
        else:
            env_var = config.api_key_env if config is not None else None
            value = os.environ.get(env_var) if env_var else None
            secret, config_key = SecretStr(value) if value else None, f"model_registry.providers.{name}.api_key_env"
        if secret is None:
            return None
        key, problem = clean_credential(secret.get_secret_value())
        if problem:
            raise InvalidCredentialsError(name, env_var, config_key, problem, model_id=model_info.id)
        return SecretStr(key) if key else None

    def create_model(self, model_info: ModelInfo) -> Provider:
        """The adapter serving ``model_info`` (shared with other models on equal settings)."""
        settings = self.resolve_settings(model_info)
        key = (
            settings.kind,
            settings.name,
            settings.api_key.get_secret_value() if settings.api_key else None,
            settings.base_url,
            settings.timeout,
            repr(sorted(settings.options.items())),
            settings.transport,
            settings.max_connections,
        )
        with self._lock:
            adapter = self._adapters.get(key)
            if adapter is None:
                adapter = self._adapters[key] = provider_class(settings.kind)(settings)
            return adapter

    def adapters(self) -> list[Provider]:
        with self._lock:
            return list(self._adapters.values())
