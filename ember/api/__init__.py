"""Ember's public API, one submodule per area; each loads on first use.

>>> from ember.api import models, non, operators, data, xcs
>>> from ember.api.operators import Operator, Specification, EmberModel
"""

import importlib as _importlib

__all__ = ["data", "models", "non", "operators", "xcs"]


def __getattr__(name: str):
    if name in __all__:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
