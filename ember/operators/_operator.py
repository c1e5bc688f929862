"""Operator: a typed, frozen, pytree-registered unit of computation.

Like an Equinox Module, an operator is a frozen dataclass and a JAX pytree, and what JAX
sees of it is *declared* by its class, never guessed from the values of one instance. A
field is a pytree child when its annotation names an array type (``jax.Array``,
``np.ndarray``, ``jax.typing.ArrayLike``, ...) or an operator type, anywhere in it
(``list[Operator]``, ``dict[str, Affine]``, ``jax.Array | None``); every other field --
model ids, prompts, temperatures, services -- is static treedef metadata. So every
instance of a class has the same children, whether it was built with an array or with
``None`` there; ``jax.tree_util`` sees only what can be traced or differentiated; nested
operators flatten into one tree; and ``jax.jit``/``jax.grad``/``jax.vmap`` apply:

>>> import jax, jax.numpy as jnp
>>> from ember.operators import EmberModel, Operator, Specification, field
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

:func:`~ember.operators.field` overrides the annotation: ``field(static=True)`` keeps an
array out of the leaves, a constant to JAX; ``field(static=False)`` makes a field a child
whatever its annotation says:

>>> class Masked(Operator):
...     w: jax.Array
...     mask: jax.Array = field(static=True)
...     def forward(self, *, inputs):
...         return self.w * self.mask
>>> len(jax.tree_util.tree_leaves(Masked(w=jnp.ones(2), mask=jnp.array([1.0, 0.0]))))
1

Annotations are resolved at the first construction of a class (so they may name classes
defined after it) in the defining module and class body; a name that does not resolve
there (one imported only under ``TYPE_CHECKING``) counts as static. Declarations are
checked when an instance is built: assigning an undeclared attribute, or putting an array
or operator into a field that is static only by its annotation, raises ``TypeError``:

>>> class Sloppy(Operator):
...     def __init__(self):
...         self.w = jnp.ones(2)
...     def forward(self, *, inputs):
...         return self.w
>>> Sloppy()
Traceback (most recent call last):
TypeError: Sloppy has no field 'w': annotate it at class level (w: jax.Array, ...

Fields are declared with annotations (a dataclass ``__init__`` is generated) and may be
assigned in a hand-written ``__init__`` instead; either way the instance is frozen once
construction returns. ``ClassVar`` annotations (``specification``) are not fields.

Calling: ``op(inputs={...})``, ``op(inputs=InModel(...))`` or ``op(field=...)``. Inputs
are validated into the specification's input model before ``forward`` runs and the result
into its structured output after, so ``forward`` sees and returns typed models. Operators
call sub-operators through ``__call__`` too, which is the one place an execution engine
needs to intercept to trace a graph of operator calls.

Awaiting: ``await op.acall(inputs=...)`` validates the same way and awaits
``aforward``. By default ``aforward`` runs ``forward`` on a worker thread (in a copy of
the caller's context, so usage and cancel scopes reach it), so every operator can be
awaited as written. Operators whose work is waiting on models (ensembles, judges,
pipelines of them) override ``aforward`` to await their calls on the loop instead: an
evaluation running on Ember's I/O loop then spends no thread and no loop crossing on them.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import sys
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import jax
import numpy as np
from pydantic import BaseModel

from ember._runtime import to_thread
from ember.operators._annotations import mentions
from ember.operators._field import declared_static
from ember.operators._intercept import current_hook, intercept_calls
from ember.operators._model import Record
from ember.operators._specification import Specification

__all__ = ["Operator"]

InT = TypeVar("InT")
OutT = TypeVar("OutT")
_LAYOUT = "__ember_layout__"
_FIELDS = "__ember_fields__"


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


class _Fields(NamedTuple):
    """What JAX sees of one operator class, decided once from its declarations."""

    order: tuple[str, ...]  # all fields, in declaration order (for repr)
    children: tuple[str, ...]  # pytree children
    static: tuple[str, ...]  # treedef metadata
    checked: tuple[tuple[str, str], ...]  # (name, annotation) of the fields static by annotation only
    names: frozenset[str]


class _Layout(NamedTuple):
    """One instance's treedef metadata: its class's fields and its static values."""

    order: tuple[str, ...]
    dynamic: tuple[str, ...]
    static: _Static


def _fields(cls: type[Operator]) -> _Fields:
    cached = vars(cls).get(_FIELDS)  # per class, not inherited: a subclass declares its own
    if cached is None:
        cached = _declare(cls)
        setattr(cls, _FIELDS, cached)
    return cached


def _declare(cls: type[Operator]) -> _Fields:
    owners = {name: klass for klass in reversed(cls.__mro__) for name in vars(klass).get("__annotations__", {})}
    order = tuple(f.name for f in dataclasses.fields(cls))
    children: list[str] = []
    static: list[str] = []
    checked: list[tuple[str, str]] = []
    for f in dataclasses.fields(cls):
        explicit = declared_static(f)
        if explicit is not None:
            is_child = not explicit
        else:
            is_child = mentions(f.type, _namespace(owners.get(f.name, cls)), _CHILD_TYPES)
            if not is_child:
                checked.append((f.name, f.type if isinstance(f.type, str) else repr(f.type)))
        (children if is_child else static).append(f.name)
    return _Fields(order, tuple(children), tuple(static), tuple(checked), frozenset(order))


def _namespace(owner: type) -> dict[str, Any]:
    """Where annotations written in ``owner``'s body resolve: its module, then its body."""
    module = sys.modules.get(owner.__module__)
    return {**(vars(module) if module else {}), **vars(owner), owner.__name__: owner}


def _holds_jax_values(value: Any) -> bool:
    if isinstance(value, _CHILD_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_jax_values(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_jax_values(v) for v in value.values())
    return False


def _layout(op: Operator) -> _Layout:
    cls = type(op)
    fields, values = _fields(cls), op.__dict__
    for name in fields.order:
        if name not in values:  # a hand-written __init__ left it at its class default
            if not hasattr(cls, name):
                raise TypeError(f"{cls.__name__}.__init__ did not assign field {name!r}")
            values[name] = getattr(cls, name)
    for name, annotation in fields.checked:
        if _holds_jax_values(values[name]):
            raise TypeError(
                f"{cls.__name__}.{name} holds an array or operator, but its annotation {annotation!r} names no "
                f"array or operator type (resolvable in {cls.__module__}), so it is static: annotate it jax.Array "
                f"(or the operator type) to make it a pytree child, or declare it "
                f"`{name}: ... = field(static=True)` if it is a constant"
            )
    return _Layout(fields.order, fields.children, _Static(tuple((name, values[name]) for name in fields.static)))


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
        _fields(cls)  # resolved before __init__ runs: __setattr__ checks names against it
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

    async def aforward(self, *, inputs: InT) -> OutT:
        """``forward``, awaitable: by default on a worker thread, in a copy of the caller's context.

        Override it when the work is awaiting models (call sub-operators through
        :meth:`acall`, models through ``LMModule``'s async methods): the operator then runs on
        the caller's event loop with no thread at all.
        """
        return await to_thread(self.forward, inputs=inputs)

    def __call__(self, *, inputs: Mapping[str, Any] | BaseModel | Any = None, **fields: Any) -> OutT:
        raw = self._raw(inputs, fields)
        hook = current_hook()
        if hook is not None:  # the execution engine is recording or rescheduling calls
            return hook(self, raw, self._call_unhooked)
        return self._call(raw)

    async def acall(self, *, inputs: Mapping[str, Any] | BaseModel | Any = None, **fields: Any) -> OutT:
        """``__call__``, awaitable: the same validation of inputs and output around :meth:`aforward`.

        Under an execution engine's hook (``ember.xcs`` tracing), the call is handed to the
        hook through ``__call__`` on a worker thread, so the engine sees it as ever.
        """
        raw = self._raw(inputs, fields)
        if current_hook() is not None:
            return await to_thread(self.__call__, inputs=raw)
        return self._output(await self.aforward(inputs=self._inputs(raw)))

    def _raw(self, inputs: Any, fields: dict[str, Any]) -> Any:
        if inputs is not None and fields:
            raise TypeError(f"{type(self).__name__}: pass inputs= or keyword fields, not both")
        return fields if inputs is None else inputs

    def _call_unhooked(self, raw: Any) -> OutT:
        with intercept_calls(None):
            return self._call(raw)

    def _call(self, raw: Any) -> OutT:
        return self._output(self.forward(inputs=self._inputs(raw)))

    def _inputs(self, raw: Any) -> Any:
        """``raw`` as ``forward`` sees it: validated into the input model, or a :class:`Record`."""
        spec = self.specification
        if spec is not None:
            return spec.validate_inputs(raw)
        return Record.model_validate(raw) if isinstance(raw, Mapping) else raw

    def _output(self, output: Any) -> OutT:
        spec = self.specification
        return output if spec is None else spec.validate_output(output)

    def __setattr__(self, name: str, value: Any) -> None:
        if _LAYOUT in self.__dict__:
            raise dataclasses.FrozenInstanceError(
                f"cannot assign {name!r}: {type(self).__name__} is frozen; build a new operator instead"
            )
        cls = type(self)
        if name not in _fields(cls).names:
            raise TypeError(
                f"{cls.__name__} has no field {name!r}: annotate it at class level ({name}: jax.Array, "
                f"{name}: SomeOperator, {name}: str, ...), with `= field(static=True)` for array constants"
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


_CHILD_TYPES = (jax.Array, np.ndarray, Operator)  # what a pytree child may hold
