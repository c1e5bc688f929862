"""How a batch transform reads a call: which arguments are mapped, which are broadcast, and
how per-item results are put back together.

A call ``g(*args, inputs=..., **fields)`` is split into *slots*: each positional argument,
each keyword field, and each field of an ``inputs`` mapping (or the ``inputs`` value itself
when it is a list or an array). A slot is

- an **array slot**: a ``jax.Array``/``np.ndarray`` (or a pytree whose leaves are all
  arrays) mapped along its ``in_axes`` axis, as ``jax.vmap`` maps it;
- a **host slot**: a list or tuple, one element per item (strings, records, anything);
- a **broadcast slot**: ``in_axes`` None, or a value that has no batch axis (a string, a
  number, a record), given whole to every item.

Every mapped slot must have the same length. Results are assembled the way inputs came:
a list of items in (``inputs=[...]`` or one positional list) gives a list of results out;
fields of batches in give fields of batches out (arrays stacked, everything else in lists),
as ``jax.vmap`` returns a model of stacked arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel

from ember.operators import Operator, is_array
from ember.xcs._transform_errors import BatchAxisError

__all__ = ["AxisSpec", "BatchedCall", "assemble", "concatenate", "split_call"]

#: ``in_axes``: one axis (or None) for every slot, a tuple for positional arguments, or a
#: mapping from field name to axis (unnamed fields use axis 0).
AxisSpec = int | None | Sequence[int | None] | Mapping[str, int | None]
Key = int | str  # a positional index, or a field name
_INPUTS = "inputs"


def _is_array_tree(value: Any) -> bool:
    if is_array(value):
        return True
    if isinstance(value, (list, tuple, str, bytes)) or value is None:
        return False
    leaves = jax.tree_util.tree_leaves(value)
    return bool(leaves) and all(is_array(leaf) for leaf in leaves)


def _is_host_batch(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object)


@dataclasses.dataclass(frozen=True)
class BatchedCall:
    """One call to a batch transform, split into slots (see the module docstring)."""

    args: tuple[Any, ...]
    fields: dict[str, Any]
    #: True when the fields came as ``inputs=`` (a mapping or model), False for keywords.
    as_inputs: bool
    #: The mapped slots and their axes; arrays and array pytrees only in ``array_axes``.
    array_axes: dict[Key, int]
    host_slots: tuple[Key, ...]
    size: int
    #: ``inputs=[...]`` or one positional list: results come back as a list.
    itemwise: bool

    def value(self, key: Key) -> Any:
        return self.args[key] if isinstance(key, int) else self.fields[key]

    def rebuild(self, values: Mapping[Key, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` for the wrapped function, with ``values`` in place of slots."""
        args = tuple(values.get(i, a) for i, a in enumerate(self.args))
        if self.itemwise and _INPUTS in values and not self.as_inputs:
            return args, {_INPUTS: values[_INPUTS]}
        fields = {name: values.get(name, v) for name, v in self.fields.items()}
        return args, ({_INPUTS: fields} if self.as_inputs else fields)

    def item(self, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of item ``index``: host slots indexed, array slots sliced."""
        values: dict[Key, Any] = {key: self.value(key)[index] for key in self.host_slots}
        for key, axis in self.array_axes.items():
            values[key] = jax.tree_util.tree_map(lambda x, a=axis: _take(x, index, a), self.value(key))
        return self.rebuild(values)

    def chunk(self, start: int, stop: int) -> BatchedCall:
        """The same call restricted to items ``start:stop``."""
        values: dict[Key, Any] = {key: self.value(key)[start:stop] for key in self.host_slots}
        for key, axis in self.array_axes.items():
            values[key] = jax.tree_util.tree_map(lambda x, a=axis: _slice(x, start, stop, a), self.value(key))
        args = tuple(values.get(i, a) for i, a in enumerate(self.args))
        fields = {name: values.get(name, v) for name, v in self.fields.items()}
        return dataclasses.replace(self, args=args, fields=fields, size=stop - start)


def _take(x: Any, index: int, axis: int) -> Any:
    return jnp.take(x, index, axis=axis) if isinstance(x, jax.Array) else np.take(x, index, axis=axis)


def _slice(x: Any, start: int, stop: int, axis: int) -> Any:
    return (
        jax.lax.slice_in_dim(x, start, stop, axis=axis)
        if isinstance(x, jax.Array)
        else x.take(range(start, stop), axis)
    )


def split_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], in_axes: AxisSpec) -> BatchedCall:
    """Read a call to a batch transform of ``fn`` into slots, checking the batch axes agree."""
    if isinstance(fn, Operator) and len(args) == 1 and not kwargs:  # op(batch) means op(inputs=batch)
        args, kwargs = (), {_INPUTS: args[0]}
    as_inputs, itemwise = False, False
    fields = dict(kwargs)
    if _INPUTS in kwargs and len(kwargs) == 1:
        inputs = kwargs[_INPUTS]
        if isinstance(inputs, BaseModel):
            inputs = {name: getattr(inputs, name) for name in _model_fields(inputs)}
        if isinstance(inputs, Mapping):
            fields, as_inputs = dict(inputs), True
        else:
            itemwise = _is_host_batch(inputs)
    elif len(args) == 1 and not kwargs and _is_host_batch(args[0]):
        itemwise = True
    slots: dict[Key, Any] = {**dict(enumerate(args)), **fields}
    axes = _axes_for(slots, in_axes)

    array_axes: dict[Key, int] = {}
    host: list[Key] = []
    sizes: dict[Key, int] = {}
    for key, value in slots.items():
        axis, explicit = axes[key]
        if axis is None:
            continue
        if _is_host_batch(value):
            if axis != 0:
                raise BatchAxisError(
                    f"{_name(key)} is a list (a host batch): its in_axes must be 0 or None, not {axis}"
                )
            host.append(key)
            sizes[key] = len(value)
        elif _is_array_tree(value):
            array_axes[key] = axis
            sizes[key] = _array_size(key, value, axis)
        elif explicit:
            raise BatchAxisError(
                f"{_name(key)} has in_axes {axis} but is a {type(value).__name__}, which has no batch axis; "
                "pass a list or an array, or in_axes None to give it whole to every item"
            )
    if not sizes:
        raise BatchAxisError(
            "nothing to map over: pass the batch as lists (host values) or arrays (mapped along in_axes), "
            f"got {', '.join(f'{_name(k)}: {type(v).__name__}' for k, v in slots.items()) or 'no arguments'}"
        )
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{_name(k)}: {n}" for k, n in sizes.items())
        raise BatchAxisError(f"batch sizes differ: {listed}; every mapped input needs the same number of items")
    return BatchedCall(
        args=tuple(args),
        fields=fields,
        as_inputs=as_inputs,
        array_axes=array_axes,
        host_slots=tuple(host),
        size=next(iter(sizes.values())),
        itemwise=itemwise,
    )


def _model_fields(model: BaseModel) -> tuple[str, ...]:
    extra = model.__pydantic_extra__ or {}
    return (*type(model).model_fields, *extra)


def _name(key: Key) -> str:
    return f"positional argument {key}" if isinstance(key, int) else f"field {key!r}"


def _axes_for(slots: Mapping[Key, Any], in_axes: AxisSpec) -> dict[Key, tuple[int | None, bool]]:
    """Each slot's axis, and whether the user named it explicitly."""
    if in_axes is None or isinstance(in_axes, int):
        return {key: (in_axes, in_axes != 0) for key in slots}
    if isinstance(in_axes, Mapping):
        unknown = [name for name in in_axes if name not in slots]
        if unknown:
            from ember._runtime import close_matches, did_you_mean

            known = [k for k in slots if isinstance(k, str)]
            hint = did_you_mean(close_matches(str(unknown[0]), known))
            raise BatchAxisError(f"in_axes names {unknown}, which the call does not pass (fields: {known}).{hint}")
        return {key: (in_axes[key], True) if key in in_axes else (0, False) for key in slots}
    in_axes = tuple(in_axes)
    positional = [k for k in slots if isinstance(k, int)]
    if len(in_axes) != len(positional):
        raise BatchAxisError(f"in_axes has {len(in_axes)} entries for {len(positional)} positional arguments")
    return {key: ((in_axes[key], True) if isinstance(key, int) else (0, False)) for key in slots}


def _array_size(key: Key, value: Any, axis: int) -> int:
    sizes = set()
    for leaf in jax.tree_util.tree_leaves(value):
        if not -leaf.ndim <= axis < max(leaf.ndim, 1) or leaf.ndim == 0:
            raise BatchAxisError(f"{_name(key)}: in_axes {axis} is out of range for an array of shape {leaf.shape}")
        sizes.add(leaf.shape[axis])
    if len(sizes) > 1:
        raise BatchAxisError(f"{_name(key)}: its arrays have different sizes {sorted(sizes)} along axis {axis}")
    return sizes.pop()


def assemble(results: Sequence[Any], call: BatchedCall) -> Any:
    """Per-item results as one batched result (see the module docstring)."""
    return list(results) if call.itemwise else _stack(list(results))


def _stack(values: list[Any]) -> Any:
    first = values[0]
    if all(is_array(v) for v in values) and len({(np.shape(v), np.result_type(v)) for v in values}) == 1:
        return jnp.stack(values) if any(isinstance(v, jax.Array) for v in values) else np.stack(values)
    if isinstance(first, BaseModel) and all(type(v) is type(first) for v in values):
        names = _model_fields(first)
        if all(_model_fields(v) == names for v in values):
            return type(first).model_construct(**{n: _stack([getattr(v, n) for v in values]) for n in names})
    if isinstance(first, Mapping) and all(isinstance(v, Mapping) and v.keys() == first.keys() for v in values):
        return {k: _stack([v[k] for v in values]) for k in first}
    if type(first) is tuple and all(type(v) is tuple and len(v) == len(first) for v in values):
        return tuple(_stack([v[i] for v in values]) for i in range(len(first)))
    return values


def concatenate(parts: Sequence[Any], call: BatchedCall) -> Any:
    """Batched results of consecutive chunks as one batched result."""
    if call.itemwise:
        return [item for part in parts for item in part]
    return _concat(list(parts))


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if is_array(first):
        return jnp.concatenate(parts) if isinstance(first, jax.Array) else np.concatenate(parts)
    if isinstance(first, list):
        return [item for part in parts for item in part]
    if isinstance(first, BaseModel):
        names = _model_fields(first)
        return type(first).model_construct(**{n: _concat([getattr(p, n) for p in parts]) for n in names})
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if type(first) is tuple:
        return tuple(_concat([p[i] for p in parts]) for i in range(len(first)))
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)
