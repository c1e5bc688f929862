"""The seed's import paths, served by one table instead of a tree of shim packages.

Ember's architecture document imports from a deep tree (``ember.core.app_context``,
``ember.core.utils.data.service``, ...). The code lives in flat packages instead
(``ember._context``, ``ember.data``, ...). Every old path maps here to the module that now
holds its names, and a :class:`importlib.abc.MetaPathFinder` serves the alias *as that
module*: ``ember.core.utils.eval.pipeline`` is ``ember.eval``, the same object, so types,
registries and ``isinstance`` checks agree whichever path a user typed.

>>> from ember.core.utils.data.service import DataService
>>> import ember.data
>>> DataService is ember.data.DataService
True

Installing the finder costs nothing else: a target is imported only when its alias is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

__all__ = ["SEED_ALIASES", "install"]

#: Seed path -> the module serving it; ``None`` is a package that only holds other aliases.
SEED_ALIASES: dict[str, str | None] = {
    "ember.core": None,
    "ember.core.app_context": "ember._context",
    "ember.core.configs": "ember.config",
    "ember.core.types": "ember.operators",
    "ember.core.registry": None,
    "ember.core.registry.model": "ember.models",
    "ember.core.registry.operator": "ember.operators",
    "ember.core.registry.specification": "ember.operators",
    "ember.core.non": "ember.non",
    "ember.core.utils": None,
    "ember.core.utils.data": "ember.data",
    "ember.core.utils.data.service": "ember.data",
    "ember.core.utils.data.base": "ember.data",
    "ember.core.utils.data.base.samplers": "ember.data",
    "ember.core.utils.eval": "ember.eval",
    "ember.core.utils.eval.pipeline": "ember.eval",
    "ember.core.utils.eval.evaluators": "ember.eval",
    "ember.api.operator": "ember.api.operators",
    "ember.xcs.graph": "ember.xcs",
    "ember.xcs.engine": "ember.xcs",
    "ember.xcs.tracer": "ember.xcs",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str | None) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.target is None:
            package = types.ModuleType(spec.name, f"Seed import path; see {__name__}.")
            package.__path__ = []
            return package
        module = importlib.import_module(self.target)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the target module is already executed. The import system has just
        set its ``__spec__`` to the alias's spec; the real one goes back, or the module would
        stop being a package (``importlib.resources.files`` on it fails, for one)."""
        if self.target is not None:
            module.__spec__ = self._real_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in SEED_ALIASES:
            return None
        alias = SEED_ALIASES[fullname]
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(alias), is_package=alias is None)


def install() -> None:
    """Serve :data:`SEED_ALIASES` (idempotent)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
