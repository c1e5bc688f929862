"""Ember: compound AI systems — networks of LLM calls — composed like neural-network layers.

``import ember`` loads almost nothing; services, SDKs and JAX are imported on first use.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["initialize_ember", "get_app_context"]

if TYPE_CHECKING:
    from ember._context import get_app_context, initialize_ember


def __getattr__(name: str):
    if name in __all__:
        from ember import _context

        return getattr(_context, name)
    raise AttributeError(f"module 'ember' has no attribute {name!r}")
