"""EmberModel: the pydantic base of operator inputs and outputs, and a JAX pytree.

Inputs and outputs are validated pydantic models, so a typo in a field name fails where
it is made. They are also pytrees (each field a child), so a model of arrays passes
through ``jax.jit``, ``jax.vmap`` and ``jax.tree_util`` like a dict would:

>>> import jax, jax.numpy as jnp
>>> class Point(EmberModel):
...     x: jax.Array
...     y: jax.Array
>>> jax.tree_util.tree_map(lambda v: v * 2, Point(x=jnp.ones(2), y=jnp.zeros(2))).x
Array([2., 2.], dtype=float32)

``arbitrary_types_allowed`` is on so fields may be typed ``jax.Array``; tracers are
``jax.Array`` instances, so validation also works inside ``jax.jit``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
from pydantic import BaseModel, ConfigDict

__all__ = ["EmberModel", "Record"]


def _names(model: BaseModel) -> tuple[str, ...]:
    extra = model.__pydantic_extra__
    return (*type(model).model_fields, *extra) if extra else tuple(type(model).model_fields)


def _flatten(model: BaseModel) -> tuple[list[Any], tuple[str, ...]]:
    names = _names(model)
    return [getattr(model, name) for name in names], names


def _flatten_with_keys(model: BaseModel) -> tuple[list[tuple[Any, Any]], tuple[str, ...]]:
    names = _names(model)
    return [(jax.tree_util.GetAttrKey(name), getattr(model, name)) for name in names], names


def _register(cls: type[BaseModel]) -> None:
    # Unflatten without validation: leaves may be tracers, sentinels or None mid-transform.
    def unflatten(names: tuple[str, ...], children: Any) -> BaseModel:
        return cls.model_construct(**dict(zip(names, children)))

    jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, unflatten, _flatten)


class EmberModel(BaseModel):
    """Base class of operator inputs and outputs; ``model["field"]`` reads a field too."""

    model_config: ClassVar[ConfigDict] = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _register(cls)

    def __getitem__(self, name: str) -> Any:
        if name in _names(self) or name in type(self).model_computed_fields:
            return getattr(self, name)
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        """``model.get("field", default)``, as on a dict."""
        try:
            return self[name]
        except KeyError:
            return default


_register(EmberModel)


class Record(EmberModel):
    """Inputs of an operator that declares no input model: any fields, kept as given."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="allow")
