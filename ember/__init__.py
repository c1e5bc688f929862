"""Ember: compound AI systems — networks of LLM calls — composed like neural-network layers.

``import ember`` loads almost nothing; services, SDKs and JAX are imported on first use.
The public surface is :mod:`ember.api` (``from ember.api import models, non``); each
``ember.<package>`` re-exports its own names, and the seed's deep import paths
(``ember.core.app_context``, ...) are served by :mod:`ember._aliases`.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from ember._aliases import install as _install_seed_aliases

__version__ = "0.1.0"
__all__ = ["initialize_ember", "get_app_context"]

if _TYPE_CHECKING:
    from ember._context import get_app_context, initialize_ember

_install_seed_aliases()


def __getattr__(name: str):
    if name in __all__:
        from ember import _context

        return getattr(_context, name)
    raise AttributeError(f"module 'ember' has no attribute {name!r}")
