"""From what a user passes to the pipeline (a model id, notation, an operator, a function) to a System."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ember.eval._operator_system import OperatorSystem, is_operator
from ember.eval._systems import FunctionSystem, ModelSystem, System

if TYPE_CHECKING:
    from ember.models import ModelService

__all__ = ["as_system"]


def as_system(system: Any, *, name: str | None = None, service: ModelService | None = None, **params: Any) -> System:
    """Wrap ``system``: a :class:`System`, a model id or NON compact notation, an operator, or a function."""
    if isinstance(system, System):
        return system
    if isinstance(system, str):
        from ember.non import is_notation

        if is_notation(system):  # sampling settings live in the notation itself
            return OperatorSystem.from_notation(system, name=name, service=service)
        return ModelSystem(system, service=service, name=name, **params)
    if is_operator(system):
        return OperatorSystem(system, name=name)
    if callable(system):
        return FunctionSystem(system, name=name)
    raise TypeError(f"cannot evaluate {system!r}: pass a model id, compact NON notation, an operator or a function")
