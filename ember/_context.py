"""The application context: one place that wires configuration, models and usage.

Created lazily on first use, so ``import ember`` stays cheap. ``initialize_ember()``
replaces it (e.g. after changing config files) and returns its model service.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ember.config import ConfigManager
    from ember.models import ModelRegistry, ModelService, UsageService

__all__ = ["EmberAppContext", "get_app_context", "initialize_ember", "reset_app_context"]


class EmberAppContext:
    """Holds the process's services; build one explicitly for dependency injection in tests."""

    def __init__(
        self,
        config_manager: ConfigManager | None = None,
        registry: ModelRegistry | None = None,
        usage_service: UsageService | None = None,
    ) -> None:
        from ember.config import get_config_manager
        from ember.models import ModelService

        self.config_manager = config_manager or get_config_manager()
        self.model_service: ModelService = ModelService(
            registry=registry, usage_service=usage_service, config_manager=self.config_manager
        )

    @property
    def usage_service(self) -> UsageService:
        return self.model_service.usage_service

    @property
    def model_registry(self) -> ModelRegistry:
        return self.model_service.registry


_lock = threading.Lock()
_context: EmberAppContext | None = None


def get_app_context() -> EmberAppContext:
    """The process-wide context, created on first call."""
    global _context
    if _context is None:
        with _lock:
            if _context is None:
                _context = EmberAppContext()
    return _context


def initialize_ember(
    config_manager: ConfigManager | None = None,
    registry: ModelRegistry | None = None,
    usage_service: UsageService | None = None,
) -> ModelService:
    """Build a fresh process-wide context and return its :class:`ModelService`.

    >>> service = initialize_ember()                              # doctest: +SKIP
    >>> service("anthropic:claude-3-sonnet", "Hello Claude")      # doctest: +SKIP
    """
    global _context
    with _lock:
        _context = EmberAppContext(config_manager, registry, usage_service)
        return _context.model_service


def reset_app_context() -> None:
    """Forget the process-wide context; the next :func:`get_app_context` builds a new one."""
    global _context
    with _lock:
        _context = None
