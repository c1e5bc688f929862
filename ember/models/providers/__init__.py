"""Provider adapters; built-in ones are imported on first use of their provider."""

from ember.models.providers._base import Provider, ProviderSettings, provider_class, register_provider

__all__ = ["Provider", "ProviderSettings", "provider_class", "register_provider"]
