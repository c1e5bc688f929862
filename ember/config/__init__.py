"""Ember's configuration: typed sections merged from overrides, environment and files.

    from ember.config import get_config_manager

    registry = get_config_manager().get_config("model_registry")
    registry.providers.openai.api_key      # SecretStr | None
"""

from ember.config._errors import ConfigError
from ember.config._manager import ConfigManager, create_config_manager, get_config_manager, set_config_manager
from ember.config._schema import (
    AppConfig,
    CacheConfig,
    DataConfig,
    EmberConfig,
    ModelEntryConfig,
    ModelRegistryConfig,
    ProviderConfig,
    ProvidersConfig,
    reveal_secrets,
)

__all__ = [
    "ConfigError",
    "ConfigManager",
    "create_config_manager",
    "get_config_manager",
    "set_config_manager",
    "EmberConfig",
    "ModelEntryConfig",
    "ModelRegistryConfig",
    "ProvidersConfig",
    "ProviderConfig",
    "AppConfig",
    "CacheConfig",
    "DataConfig",
    "reveal_secrets",
]
