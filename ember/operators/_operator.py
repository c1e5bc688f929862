"""Operator: a typed, frozen, pytree-registered unit of computation.

Like an Equinox Module, an operator is a frozen dataclass and a JAX pytree. Fields that
hold arrays or other operators (directly or in lists, tuples and dicts) are pytree
children; everything else -- model ids, prompts, temperatures, services -- is static
metadata. So ``jax.tree_util`` sees only what can be differentiated or traced, nested
operators flatten into one tree, and ``jax.jit``/``jax.grad`` apply to array operators:

>>> import jax, jax.numpy as jnp
>>> from ember.operators import EmberModel, Operator, Specification
>>> class XIn(EmberModel):
...     x: jax.Array
>>> class YOut(EmberModel):
...     y: jax.Array
>>> class Scale(Operator[XIn, YOut]):
...     specification = Specification(input_model=XIn, structured_output=YOut)
...     w: jax.Array
...     name: str = "scale"
...     def forward(self, *, inputs):
...         return YOut(y=self.w * inputs.x)
>>> op = Scale(w=jnp.array(3.0))
>>> jax.tree_util.tree_leaves(op)
[Array(3., dtype=float32, weak_type=True)]
>>> jax.jit(lambda op, x: op(x=x).y)(op, 2.0)
Array(6., dtype=float32, weak_type=True)

Fields are declared with annotations (a dataclass ``__init__`` is generated) or assigned
in a custom ``__init__``; either way the instance is frozen once construction returns.
Which fields are children is decided then, from their values, and kept in the treedef.

Calling: ``op(inputs={...})``, ``op(inputs=InModel(...))`` or ``op(field=...)``. Inputs
are validated into the specification's input model before ``forward`` runs and the result
into its structured output after, so ``forward`` sees and returns typed models. Operators
call sub-operators through ``__call__`` too, which is the one place an execution engine
needs to intercept to trace a graph of operator calls.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import jax
import numpy as np
from pydantic import BaseModel

from ember.operators._intercept import current_hook, intercept_calls
from ember.operators._model import Record
from ember.operators._specification import Specification

__all__ = ["Operator"]

InT = TypeVar("InT")
OutT = TypeVar("OutT")
_LAYOUT = "__ember_layout__"


class _Static:
    """Static field values as treedef metadata: compared by value, hashed safely."""

    __slots__ = ("_hash", "items")

    def __init__(self, items: tuple[tuple[str, Any], ...]) -> None:
        self.items = items
        try:
            self._hash = hash(items)
        except TypeError:  # a list or dict among the values: hash the names only
            self._hash = hash(tuple(name for name, _ in items))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static):
            return NotImplemented
        if self.items is other.items:
            return True
        try:
            return bool(self.items == other.items)
        except (TypeError, ValueError):  # == that is not a plain bool (arrays): unequal
            return False

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return ", ".join(f"{name}={value!r:.40}" for name, value in self.items)


class _Layout(NamedTuple):
    order: tuple[str, ...]  # all fields, in assignment order (for repr)
    dynamic: tuple[str, ...]  # pytree children
    static: _Static


def _is_dynamic(value: Any) -> bool:
    if isinstance(value, (jax.Array, np.ndarray, Operator)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_is_dynamic(v) for v in value)
    if isinstance(value, dict):
        return any(_is_dynamic(v) for v in value.values())
    return False


def _layout(op: Operator) -> _Layout:
    fields = {k: v for k, v in vars(op).items() if k != _LAYOUT}
    dynamic = tuple(name for name, value in fields.items() if _is_dynamic(value))
    static = tuple((name, value) for name, value in fields.items() if name not in dynamic)
    return _Layout(tuple(fields), dynamic, _Static(static))


def _flatten(op: Operator) -> tuple[tuple[Any, ...], _Layout]:
    layout, fields = op.__dict__[_LAYOUT], op.__dict__
    return tuple(fields[name] for name in layout.dynamic), layout


def _flatten_with_keys(op: Operator) -> tuple[tuple[tuple[Any, Any], ...], _Layout]:
    layout, fields = op.__dict__[_LAYOUT], op.__dict__
    return tuple((jax.tree_util.GetAttrKey(name), fields[name]) for name in layout.dynamic), layout


def _unflatten(cls: type[Operator], layout: _Layout, children: Any) -> Operator:
    op = object.__new__(cls)
    fields = op.__dict__
    fields.update(layout.static.items)
    fields.update(zip(layout.dynamic, children))
    fields[_LAYOUT] = layout
    return op


class _OperatorMeta(abc.ABCMeta):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        op = super().__call__(*args, **kwargs)
        op.__dict__[_LAYOUT] = _layout(op)  # from here on the instance is frozen
        return op


class Operator(Generic[InT, OutT], metaclass=_OperatorMeta):
    """Base class of operators: implement ``forward(self, *, inputs)``.

    ``specification`` (a class attribute) validates inputs and outputs; an operator
    without one receives its inputs as a :class:`Record` (or as given, if not a mapping)
    and returns whatever ``forward`` returns.
    """

    specification: ClassVar[Specification | None] = None
    _custom_init: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A hand-written __init__ (here or inherited) wins over the generated one.
        cls._custom_init = "__init__" in vars(cls) or any(vars(b).get("_custom_init", False) for b in cls.__mro__[1:])
        dataclasses.dataclass(cls, init=not cls._custom_init, repr=False, eq=False)
        jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, functools.partial(_unflatten, cls), _flatten)

    @abc.abstractmethod
    def forward(self, *, inputs: InT) -> OutT:
        """The computation, on validated inputs; call sub-operators through ``__call__``."""

    def __call__(self, *, inputs: Mapping[str, Any] | BaseModel | Any = None, **fields: Any) -> OutT:
        if inputs is not None and fields:
            raise TypeError(f"{type(self).__name__}: pass inputs= or keyword fields, not both")
        raw = fields if inputs is None else inputs
        hook = current_hook()
        if hook is not None:  # the execution engine is recording or rescheduling calls
            return hook(self, raw, self._call_unhooked)
        return self._call(raw)

    def _call_unhooked(self, raw: Any) -> OutT:
        with intercept_calls(None):
            return self._call(raw)

    def _call(self, raw: Any) -> OutT:
        spec = self.specification
        if spec is not None:
            return spec.validate_output(self.forward(inputs=spec.validate_inputs(raw)))
        if isinstance(raw, Mapping):
            raw = Record.model_validate(raw)
        return self.forward(inputs=raw)

    def __setattr__(self, name: str, value: Any) -> None:
        if _LAYOUT in self.__dict__:
            raise dataclasses.FrozenInstanceError(
                f"cannot assign {name!r}: {type(self).__name__} is frozen; build a new operator instead"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if _LAYOUT in self.__dict__:
            raise dataclasses.FrozenInstanceError(f"cannot delete {name!r}: {type(self).__name__} is frozen")
        object.__delattr__(self, name)

    def __repr__(self) -> str:
        layout = self.__dict__.get(_LAYOUT)
        names = layout.order if layout else [k for k in vars(self) if k != _LAYOUT]
        body = ", ".join(f"{name}={_short(getattr(self, name))}" for name in names)
        return f"{type(self).__name__}({body})"


def _short(value: Any) -> str:
    if isinstance(value, (jax.Array, np.ndarray)):
        return f"{value.dtype}{list(value.shape)}"
    return repr(value)
