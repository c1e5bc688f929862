"""From a :class:`ModelInfo` to a provider adapter, with settings resolved from config.

Settings come from the ``model_registry.providers.<name>`` config section (which already
folds in ``OPENAI_API_KEY``-style variables at the environment level), then the model's
own ``provider`` overrides. Adapters are cached per resolved settings, so all models of
one provider share one SDK client and its connection pool.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ember._runtime import install_log_redaction, register_secret
from ember.models._errors import MissingCredentialsError, ProviderNotFoundError
from ember.models._info import ModelInfo
from ember.models.providers._base import Provider, ProviderSettings, known_provider_kinds, provider_class

if TYPE_CHECKING:
    from ember.config import ConfigManager

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
        api_key = model_info.provider.api_key or (config.api_key if config else None)
        if api_key is None and config is not None and config.api_key_env:
            value = os.environ.get(config.api_key_env)
            api_key = SecretStr(value) if value else None
        if api_key is None and (cls.requires_key or (config is not None and config.api_key_env)):
            raise MissingCredentialsError(
                name, key_env or f"{name.upper()}_API_KEY", f"model_registry.providers.{name}.api_key",
                model_id=model_info.id,
            )
        if api_key is not None:
            register_secret(api_key.get_secret_value())
        timeout = (config.timeout if config else None) or cls.default_timeout or section.default_timeout
        return ProviderSettings(
            name=name,
            kind=kind,
            api_key=api_key,
            base_url=model_info.provider.base_url or (config.base_url if config else None),
            timeout=timeout,
            api_key_env=key_env,
            options=dict(config.options) if config else {},
        )

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
        )
        with self._lock:
            adapter = self._adapters.get(key)
            if adapter is None:
                adapter = self._adapters[key] = provider_class(settings.kind)(settings)
            return adapter

    def adapters(self) -> list[Provider]:
        with self._lock:
            return list(self._adapters.values())
