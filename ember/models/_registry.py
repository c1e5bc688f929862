"""The model registry: which model ids exist and what Ember knows about each.

Discovery is lazy: the bundled catalogue and the ``model_registry.models`` section of the
user's config are read on the first query, not at import. An id that is not registered but
names a known provider is resolved on demand (the provider decides whether the model
exists), so ``openai:some-new-model`` works the day it ships, with an unknown price.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ember.models._errors import ModelNotFoundError, ProviderNotFoundError
from ember.models._info import ModelInfo, catalogue, split_model_id
from ember.models.providers._base import known_provider_kinds

if TYPE_CHECKING:
    from ember.config import ConfigManager

__all__ = ["ModelRegistry"]


class ModelRegistry:
    """Thread-safe map from model id to :class:`ModelInfo`.

    >>> registry = ModelRegistry(discover=False)
    >>> registry.register_model(ModelInfo(id="openai:gpt-4o"))
    >>> registry.get_model_info("openai:gpt-4o").context_window
    128000
    """

    def __init__(self, *, discover: bool = True, config_manager: ConfigManager | None = None) -> None:
        self._models: dict[str, ModelInfo] = {}
        self._lock = threading.RLock()
        self._discover = discover
        self._discovered = not discover
        self._config_manager = config_manager

    # -- registration -------------------------------------------------------------------
    def register_model(self, model_info: ModelInfo) -> None:
        """Add or replace a model; user registrations win over discovered entries."""
        if not isinstance(model_info, ModelInfo):
            raise TypeError(f"register_model expects a ModelInfo, got {type(model_info).__name__}")
        with self._lock:
            self._models[model_info.id] = model_info

    def unregister_model(self, model_id: str) -> None:
        with self._lock:
            self._models.pop(model_id, None)

    def discover_models(self) -> list[str]:
        """Load the catalogue and the config's models (idempotent); return the ids added."""
        with self._lock:
            if self._discovered:
                return []
            self._discovered = True
            added = []
            entries = {model_id: {} for model_id in catalogue()}
            entries.update(self._configured_models())
            for model_id, fields in entries.items():
                if model_id not in self._models:
                    self._models[model_id] = ModelInfo(id=model_id, **fields)
                    added.append(model_id)
            return added

    # -- queries ------------------------------------------------------------------------
    def is_registered(self, model_id: str) -> bool:
        self._ensure_discovered()
        return model_id in self._models

    def list_models(self) -> list[str]:
        self._ensure_discovered()
        with self._lock:
            return sorted(self._models)

    def get_model_info(self, model_id: str) -> ModelInfo:
        """The info for ``model_id``, resolving unregistered ids of known providers.

        Raises :class:`ModelNotFoundError` (with close matches) for a malformed id and
        :class:`ProviderNotFoundError` for an unknown provider.
        """
        info = self._models.get(model_id)
        if info is not None:
            return info
        self._ensure_discovered()
        with self._lock:
            info = self._models.get(model_id)
            if info is not None:
                return info
            try:
                provider, _ = split_model_id(model_id)
            except ValueError as exc:
                raise ModelNotFoundError(model_id, self._models, reason=str(exc)) from None
            known = self.known_providers()
            if provider not in known:
                raise ProviderNotFoundError(model_id, provider, known)
            info = ModelInfo(id=model_id)
            self._models[model_id] = info
            return info

    def known_providers(self) -> set[str]:
        """Built-in adapter kinds plus every provider named in the config."""
        return known_provider_kinds() | {name for name, _ in self._registry_config().providers.items()}

    # -- internals ----------------------------------------------------------------------
    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self.discover_models()

    def _registry_config(self):
        if self._config_manager is None:
            from ember.config import get_config_manager

            self._config_manager = get_config_manager()
        return self._config_manager.get_config("model_registry")

    def _configured_models(self) -> dict[str, dict]:
        """``model_registry.models`` as ModelInfo keyword arguments (validated at config load)."""
        return {
            model_id: entry.model_dump(exclude_unset=True, exclude_none=True)
            for model_id, entry in self._registry_config().models.items()
        }

    def __len__(self) -> int:
        self._ensure_discovered()
        return len(self._models)

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and self.is_registered(model_id)
