"""OperatorRegistry: find operator classes by name, and build them.

Registries make operators discoverable by configuration and tooling (a name in a YAML
file, a type code in compact NON notation) without importing their modules by hand.
The built-in operators register themselves in :data:`operator_registry`:

>>> from ember.operators import operator_registry
>>> operator_registry.get("MostCommon").__name__
'MostCommon'
>>> operator_registry.create("MostCommon")(responses=["4", "four", "4"]).final_answer
'4'
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ember.operators._errors import OperatorNotFoundError
from ember.operators._operator import Operator

__all__ = ["OperatorRegistry", "operator_registry", "register_operator"]

OpT = TypeVar("OpT", bound=type[Operator])


class OperatorRegistry:
    """A thread-safe map from names to operator classes."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Operator]] = {}
        self._lock = threading.Lock()

    def register(self, cls: OpT | None = None, *, name: str | None = None) -> OpT | Callable[[OpT], OpT]:
        """Register ``cls`` under ``name`` (default: its class name); usable as a decorator.

        Registering a different class under a taken name is an error; re-registering the
        same class (a module reloaded) is not.
        """

        def add(klass: OpT) -> OpT:
            if not (isinstance(klass, type) and issubclass(klass, Operator)):
                raise TypeError(f"only Operator subclasses can be registered, got {klass!r}")
            key = name or klass.__name__
            with self._lock:
                known = self._classes.get(key)
                if known is not None and known.__qualname__ != klass.__qualname__:
                    raise ValueError(f"{key!r} is already registered to {known.__module__}.{known.__qualname__}")
                self._classes[key] = klass
            return klass

        return add if cls is None else add(cls)

    def get(self, name: str) -> type[Operator]:
        """The class registered as ``name``; :class:`OperatorNotFoundError` if none."""
        try:
            return self._classes[name]
        except KeyError:
            raise OperatorNotFoundError(name, self._classes) from None

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Operator:
        """Build the operator registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes


operator_registry = OperatorRegistry()
register_operator = operator_registry.register
