"""``field``: declare how JAX sees one operator field, when its annotation does not say.

An operator's pytree children are decided per class from its annotations: a field annotated
with an array type or an operator type is a child, anything else is static treedef metadata
(see :mod:`ember.operators._operator`). Two cases need an explicit word instead:

* an array that is a constant -- a lookup table, a mask -- and must not be traced,
  differentiated or batched: ``field(static=True)`` puts it into the treedef;
* a child whose annotation does not name an array or operator type (``Any``, a protocol):
  ``field(static=False)`` makes it a child.

>>> import jax, jax.numpy as jnp
>>> from ember.operators import Operator, field
>>> class Shift(Operator):
...     w: jax.Array
...     table: jax.Array = field(static=True, default=None)
...     def forward(self, *, inputs):
...         return self.w + self.table
>>> op = Shift(w=jnp.ones(2), table=jnp.arange(2.0))
>>> len(jax.tree_util.tree_leaves(op))  # only w; table lives in the treedef
1
"""

import dataclasses
from typing import Any

__all__ = ["declared_static", "field"]

_STATIC = "ember.static"


def field(*, static: bool | None = None, **kwargs: Any) -> Any:
    """A ``dataclasses.field(**kwargs)`` that also says whether the field is static.

    ``static=True``: treedef metadata, a constant to JAX even when it holds an array;
    ``static=False``: a pytree child whatever its annotation; ``None``: the annotation decides.
    """
    metadata = dict(kwargs.pop("metadata", None) or {})
    if static is not None:
        metadata[_STATIC] = static
    return dataclasses.field(metadata=metadata, **kwargs)


def declared_static(f: dataclasses.Field) -> bool | None:
    """The ``static=`` a field was declared with through :func:`field`, or ``None``."""
    return f.metadata.get(_STATIC)
