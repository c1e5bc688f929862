"""The transforms: ``vmap``, ``pmap``, ``mesh_sharded`` and ``compose``.

Each maps a function or operator over the leading batch of its inputs (see
:mod:`ember.xcs._mapped` for how array and host work are run, and
:mod:`ember.xcs._batching` for how inputs are read and results assembled). They differ in
what they bound and where arrays go:

=================  ==========================================  =================================
transform          host work (lists of prompts, records)       array work
=================  ==========================================  =================================
``vmap``           all items at once (``batch_size`` caps it)  ``jax.vmap`` (in ``batch_size`` chunks)
``pmap``           at most ``num_workers`` items in flight     ``jax.jit`` over ``devices``, batch sharded
``mesh_sharded``   each item once; local model split over      ``jax.jit``, inputs placed with
                   the mesh's batch axis                       ``NamedSharding(mesh, partition_spec)``
=================  ==========================================  =================================

"All at once" means within each model's concurrency budget: prompts to an ``LMModule`` are
started together on the I/O loop, while an operator per item holds one of the runtime's
worker threads as it waits, so at most 64 such items run at once.

Every transform is also curried: ``vmap(batch_size=32)`` is a transform waiting for its
function, and ``compose(t1, t2)(f)`` is ``t1(t2(f))``:

>>> from ember.xcs import compose, pmap, vmap
>>> double = compose(vmap(batch_size=2), pmap(num_workers=2))(lambda x: 2 * x)
>>> double([1, 2, 3])
[2, 4, 6]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import jax
from jax.sharding import Mesh, PartitionSpec

from ember.xcs._batching import AxisSpec
from ember.xcs._device_mesh import DeviceMesh
from ember.xcs._mapped import _UNSET, MapOptions, Mapped, Transform
from ember.xcs._transform_errors import TransformError

__all__ = ["PartitionSpec", "compose", "mesh_sharded", "pmap", "vmap"]

Fn = Callable[..., Any]


def _apply(name: str, fn: Fn | None, options: MapOptions) -> Mapped | Transform:
    transform = Transform(name, options)
    return transform if fn is None else transform(fn)


@overload
def vmap(fn: Fn, *, in_axes: AxisSpec = ..., out_axes: int = ..., batch_size: int | None = None) -> Mapped: ...
@overload
def vmap(
    fn: None = None, *, in_axes: AxisSpec = ..., out_axes: int = ..., batch_size: int | None = None
) -> Transform: ...
def vmap(
    fn: Fn | None = None, *, in_axes: AxisSpec = _UNSET, out_axes: int = _UNSET, batch_size: int | None = None
) -> Mapped | Transform:
    """Map ``fn`` over a batch: arrays through ``jax.vmap``, host items concurrently.

    ``in_axes`` is one axis (or None) for every input, a tuple for positional arguments, or
    a mapping ``{field: axis}``; lists are host batches (axis 0) and unmapped values are
    given whole to every item. ``batch_size`` bounds the items processed at once: arrays
    are vmapped in chunks of that size, host items are kept that many in flight.

    >>> import jax.numpy as jnp
    >>> vmap(lambda x, y: x * y, in_axes=(0, None))(jnp.arange(3.0), 2.0)
    Array([0., 2., 4.], dtype=float32)
    """
    return _apply("vmap", fn, MapOptions(in_axes=in_axes, out_axes=out_axes, batch_size=batch_size))


@overload
def pmap(
    fn: Fn,
    *,
    num_workers: int | None = None,
    devices: Sequence[Any] | None = None,
    in_axes: AxisSpec = ...,
    backend: Literal["local", "ray"] = "local",
) -> Mapped: ...
@overload
def pmap(
    fn: None = None,
    *,
    num_workers: int | None = None,
    devices: Sequence[Any] | None = None,
    in_axes: AxisSpec = ...,
    backend: Literal["local", "ray"] = "local",
) -> Transform: ...
def pmap(
    fn: Fn | None = None,
    *,
    num_workers: int | None = None,
    devices: Sequence[Any] | None = None,
    in_axes: AxisSpec = _UNSET,
    backend: Literal["local", "ray"] = "local",
) -> Mapped | Transform:
    """Map ``fn`` over a batch in parallel: at most ``num_workers`` host items in flight,
    and array work jitted with the batch sharded over ``devices`` (names such as
    ``"gpu:0"`` or ``jax.Device``s; default: every device).

    Unlike the deprecated ``jax.pmap``, array work is one ``jax.jit`` over a
    ``NamedSharding``: the batch need not equal the device count (it is padded), and the
    result is one sharded array.

    ``backend="ray"`` spreads host items over a Ray cluster's workers as Ray tasks (at most
    ``num_workers`` in flight; default: the cluster's CPUs); it joins the cluster named by
    ``execution_options(ray_address=...)``, else ``$RAY_ADDRESS``, else starts a local one.
    Array-only inputs with it raise :class:`TransformError`: array work stays local.
    """
    mesh = DeviceMesh(devices=devices, axis_names=("batch",)) if devices is not None else _all_devices()
    options = MapOptions(
        in_axes=in_axes,
        max_in_flight=num_workers,
        mesh=mesh,
        partition_spec=PartitionSpec("batch"),
        explicit_mesh=devices is not None,
        backend=backend,
    )
    return _apply("pmap", fn, options)


def _all_devices() -> Mesh | None:
    devices = jax.devices()
    return DeviceMesh(devices=devices, axis_names=("batch",)) if len(devices) > 1 else None


@overload
def mesh_sharded(
    fn: Fn, *, mesh: Mesh, partition_spec: PartitionSpec | None = None, in_axes: AxisSpec = ...
) -> Mapped: ...
@overload
def mesh_sharded(
    fn: None = None, *, mesh: Mesh, partition_spec: PartitionSpec | None = None, in_axes: AxisSpec = ...
) -> Transform: ...
def mesh_sharded(
    fn: Fn | None = None, *, mesh: Mesh, partition_spec: PartitionSpec | None = None, in_axes: AxisSpec = _UNSET
) -> Mapped | Transform:
    """Map ``fn`` over a batch spread across ``mesh``.

    ``partition_spec``'s first entry names the mesh axis the batch is split over (default:
    the mesh's first axis); its later entries lay out the dimensions after the batch axis
    of each array input (``PartitionSpec("batch", "model")`` splits a ``[batch, d]`` input's
    ``d`` over ``"model"``). Array work is jitted across the mesh. Host work runs each item
    exactly once, never once per replica, and the embedded model's generations for the
    items are split over the batch axis.
    """
    if not isinstance(mesh, Mesh):
        raise TransformError(
            f"mesh_sharded needs mesh= a jax.sharding.Mesh (see DeviceMesh), got {type(mesh).__name__}"
        )
    spec = partition_spec if partition_spec is not None else PartitionSpec(mesh.axis_names[0])
    named = [n for entry in spec for n in ((entry,) if isinstance(entry, str) else (entry or ()))]
    unknown = [n for n in named if n not in mesh.axis_names]
    if unknown:
        raise TransformError(f"partition_spec {spec} names {unknown}, which are not axes of the mesh {mesh.axis_names}")
    return _apply("mesh_sharded", fn, MapOptions(in_axes=in_axes, mesh=mesh, partition_spec=spec, explicit_mesh=True))


def compose(*transforms: Callable[[Fn], Fn]) -> Callable[[Fn], Fn]:
    """``compose(t1, t2, ..., tn)(f)`` is ``t1(t2(...tn(f)))``, as function composition reads.

    Ember's transforms map the same batch axis, so composing them fuses their settings into
    one mapped call (see :mod:`ember.xcs._mapped`); any other ``Callable[[f], f]`` composes too.
    """
    if not transforms:
        raise TransformError("compose() needs at least one transform")
    bad = [t for t in transforms if not callable(t) or isinstance(t, Mapped)]
    if bad:
        raise TransformError(
            f"compose() takes transforms such as vmap(batch_size=32), got {bad[0]!r}; "
            "apply the composed transform to the function instead"
        )

    def composed(fn: Fn) -> Fn:
        for transform in reversed(transforms):
            fn = transform(fn)
        return fn

    return composed
