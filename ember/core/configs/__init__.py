"""The configuration system under its architecture-document path; it lives in :mod:`ember.config`."""

from ember.config import (
    AppConfig,
    CacheConfig,
    ConfigError,
    ConfigManager,
    DataConfig,
    EmberConfig,
    ModelRegistryConfig,
    ProviderConfig,
    ProvidersConfig,
    create_config_manager,
)

__all__ = [
    "ConfigManager",
    "create_config_manager",
    "ConfigError",
    "EmberConfig",
    "ModelRegistryConfig",
    "ProvidersConfig",
    "ProviderConfig",
    "AppConfig",
    "CacheConfig",
    "DataConfig",
]
