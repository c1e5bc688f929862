"""The application context: one place that wires configuration, models, usage and logging.

Created lazily on first use, so ``import ember`` stays cheap. ``initialize_ember()``
replaces it and returns its model service; it re-reads config files and the environment
first, so a key exported or a file edited since the last context is seen.

Logging: ``app.log_level`` sets the level of the ``ember`` logger when a context is built.
The ``ember`` logger also gets a stderr handler that prints only while nothing else would
(no handler on the root logger), so that ``log_level: INFO`` shows Ember's INFO records
(retries, waits) out of the box instead of Python's last-resort handler dropping everything
below WARNING, and a later ``logging.basicConfig()`` does not print each record twice.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ember.config import ConfigManager
    from ember.models import ModelRegistry, ModelService, UsageService

__all__ = ["EmberAppContext", "apply_log_level", "get_app_context", "initialize_ember", "reset_app_context"]


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

        if config_manager is None:
            config_manager = get_config_manager()
            config_manager.reload()
        self.config_manager = config_manager
        apply_log_level(config_manager.get_config("app").log_level)
        self.model_service: ModelService = ModelService(
            registry=registry, usage_service=usage_service, config_manager=self.config_manager
        )

    @property
    def usage_service(self) -> UsageService:
        return self.model_service.usage_service

    @property
    def model_registry(self) -> ModelRegistry:
        return self.model_service.registry


class _FallbackHandler(logging.StreamHandler):
    """Writes to stderr only while the root logger has no handler of its own."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def apply_log_level(level: str) -> None:
    """Set the ``ember`` logger's level, and make sure its records are printed somewhere.

    Also installs log redaction (every logger, tracebacks included; see
    :mod:`ember._runtime._redact`), so that nothing printed from here on can show a key.
    """
    from ember._runtime import install_log_redaction

    install_log_redaction()
    logger = logging.getLogger("ember")
    logger.setLevel(level)
    if not any(isinstance(h, _FallbackHandler) for h in logger.handlers):
        handler = _FallbackHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


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

    >>> import os
    >>> from ember.testing import LoopbackServer
    >>> server = LoopbackServer().start()          # offline, in place of Anthropic
    >>> os.environ.update(server.environ())
    >>> service = initialize_ember()
    >>> service("anthropic:claude-3-5-sonnet", "What is 2 + 2?").text
    '4'
    >>> server.close()
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
