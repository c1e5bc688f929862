"""Filters: split a pytree into the arrays JAX should trace and everything else.

An operator's children may hold more than arrays -- a ``None`` placeholder, or host data in
a container of sub-operators -- and a transform of a general pytree (a dict of an operator,
a prompt and a service) must not hand strings or services to JAX. Like Equinox's
``partition``/``combine``, :func:`partition` splits a tree into two trees of the same
structure, one holding the leaves a filter picks (``None`` elsewhere) and one holding the
rest; :func:`combine` merges them back. Trace the first, close over the second:

>>> import jax, jax.numpy as jnp
>>> from ember.operators import combine, partition
>>> tree = {"w": jnp.ones(2), "prompt": "hi", "scale": 3}
>>> arrays, rest = partition(tree)
>>> arrays["prompt"] is None and rest["w"] is None
True
>>> jax.jit(lambda a: combine(a, rest)["w"] * rest["scale"])(arrays)
Array([3., 3.], dtype=float32)
>>> combine(arrays, rest)["prompt"]
'hi'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = ["combine", "is_array", "partition"]

T = TypeVar("T")


def is_array(x: Any) -> bool:
    """Whether ``x`` is a JAX array (tracers included) or a NumPy array."""
    return isinstance(x, (jax.Array, np.ndarray))


def partition(tree: T, filter: Callable[[Any], bool] = is_array) -> tuple[T, T]:
    """``(matching, rest)``: ``tree`` with the leaves ``filter`` rejects replaced by ``None``,
    and ``tree`` with the leaves it accepts replaced by ``None``; both share one structure."""
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_is_none)
    picked = [leaf is not None and filter(leaf) for leaf in leaves]
    matching = [leaf if keep else None for leaf, keep in zip(leaves, picked, strict=True)]
    rest = [None if keep else leaf for leaf, keep in zip(leaves, picked, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, matching), jax.tree_util.tree_unflatten(treedef, rest)


def combine(*trees: T) -> T:
    """One tree from trees of the same structure: per leaf, the first that is not ``None``."""
    return jax.tree_util.tree_map(_first_not_none, *trees, is_leaf=_is_none)


def _is_none(x: Any) -> bool:
    return x is None


def _first_not_none(*leaves: Any) -> Any:
    return next((leaf for leaf in leaves if leaf is not None), None)
