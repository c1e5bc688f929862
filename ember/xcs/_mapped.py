"""``Mapped``: a function mapped over one batch axis -- what ``vmap``, ``pmap`` and
``mesh_sharded`` return -- and ``Transform``, their curried form.

One call, two kinds of work, chosen by the inputs (see :mod:`ember.xcs._batching`):

- **Arrays only** (every mapped input an array): the function is traced by ``jax.vmap``, so
  the numbers are ``jax.vmap``'s and the result composes with ``jax.jit`` and ``jax.grad``.
  With a mesh (``mesh_sharded``, or ``pmap``'s devices) the mapped arrays are placed with a
  ``NamedSharding`` (the batch padded to a multiple of the batch shards) and the vmapped
  function runs under ``jax.jit`` across the devices. That jit takes the operator's arrays
  as arguments and its static half (strings, services, sub-operator structure) as a static
  argument, split with :func:`ember.operators.partition`, so a second call reuses the
  compiled program instead of baking the weights in as constants.
- **Any host input** (a list of strings or records): each item runs once, concurrently,
  inside one :class:`~ember._runtime.TaskGroup`, so its model calls share each model's
  concurrency budget, a failure cancels the other items' calls and is raised, and Ctrl-C
  stops them all. An operator or function runs per item on the runtime's shared worker
  threads, at most :data:`HOST_WIDTH` items at once (each may block a thread while it
  waits for its model). Prompts to an :class:`~ember.operators.LMModule` skip the threads:
  every call starts on the I/O loop at once, so only the model's own budget bounds them.
  Array inputs of a mixed call are sliced per item and array outputs stacked again. Under a mesh, items run inside
  :func:`ember.local.use_mesh`, so the embedded model's generations for them form one batch
  whose rows are split over the mesh's batch axis; no item is ever run once per replica.

With ``pmap(..., backend="ray")`` host items run as Ray tasks spread over a Ray cluster's
workers instead (see :mod:`ember.xcs._ray_scheduler`): at most ``num_workers`` in flight
(default: the cluster's CPUs), results in item order, the first failure cancelling the rest.
Array-only calls are refused with a :class:`TransformError`: array work stays on the local
devices, so drop ``backend="ray"`` for it.

Stacking transforms fuses them: they map the same batch axis, so ``vmap(pmap(f))`` is ``f``
mapped once with both transforms' settings (the smaller caps, the mesh of either). For
nested mapping over two axes, use ``jax.vmap`` inside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import threading
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ember._runtime import TaskGroup, check_cancelled
from ember.operators import LMModule, combine, is_array, partition
from ember.xcs._batching import AxisSpec, BatchedCall, assemble, concatenate, split_call
from ember.xcs._options import current_execution_options
from ember.xcs._transform_errors import BatchAxisError, NotTraceableError, TransformError

__all__ = ["MapOptions", "Mapped", "Transform"]

#: The most items one mapped call runs at once when nothing caps it: the width of the
#: runtime's shared worker pool (each item may block a worker while its model calls run).
HOST_WIDTH = 64
_POLL_S = 0.25
_UNSET: Any = object()
#: Where host work can run.
BACKENDS = ("local", "ray")

_TRACE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


@dataclasses.dataclass(frozen=True)
class MapOptions:
    """The settings of one mapped call; ``_UNSET`` fields take the other transform's value
    when transforms are stacked (see :meth:`under`)."""

    in_axes: AxisSpec = _UNSET
    out_axes: int = _UNSET
    #: Array work: items per ``jax.vmap`` chunk. Host work: items in flight at once.
    batch_size: int | None = None
    #: Host work: items in flight at once (``pmap``'s ``num_workers``).
    max_in_flight: int | None = None
    mesh: Mesh | None = None
    partition_spec: PartitionSpec | None = None
    #: A mesh the user gave (``mesh_sharded``, ``pmap``'s ``devices``), not ``pmap``'s
    #: default of every device: host work runs under it too, and it wins when stacked.
    explicit_mesh: bool = False
    #: Where host work runs: "local" (the runtime's threads) or "ray" (tasks on a Ray cluster).
    backend: str = "local"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise TransformError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {self.backend!r}")
        for name in ("batch_size", "max_in_flight"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise TransformError(f"{_public_name(name)} must be a positive int or None, got {value!r}")
        if self.mesh is not None and not isinstance(self.mesh, Mesh):
            raise TransformError(
                f"mesh must be a jax.sharding.Mesh (see ember.xcs.DeviceMesh), got {type(self.mesh).__name__}"
            )

    def under(self, outer: MapOptions) -> MapOptions:
        """These (inner) options stacked under ``outer``: the smaller caps, either mesh."""
        if outer.explicit_mesh and self.explicit_mesh and outer.mesh != self.mesh:
            raise TransformError("two different meshes stacked on one function; shard it over one mesh")
        mesh_from = outer if outer.explicit_mesh or (outer.mesh is not None and not self.explicit_mesh) else self
        return MapOptions(
            in_axes=self.in_axes if outer.in_axes is _UNSET else outer.in_axes,
            out_axes=self.out_axes if outer.out_axes is _UNSET else outer.out_axes,
            batch_size=_smaller(self.batch_size, outer.batch_size),
            max_in_flight=_smaller(self.max_in_flight, outer.max_in_flight),
            mesh=mesh_from.mesh,
            partition_spec=mesh_from.partition_spec,
            explicit_mesh=mesh_from.explicit_mesh,
            backend="ray" if "ray" in (self.backend, outer.backend) else "local",
        )

    @property
    def batch_axis(self) -> str | None:
        """The mesh axis items are split over: the partition spec's first entry."""
        if self.mesh is None:
            return None
        spec = self.partition_spec if self.partition_spec is not None else PartitionSpec(self.mesh.axis_names[0])
        first = spec[0] if len(spec) else None
        return first if isinstance(first, str) else None


def _public_name(name: str) -> str:
    return {"max_in_flight": "num_workers"}.get(name, name)


def _smaller(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


class Transform:
    """A transform waiting for its function: ``vmap(batch_size=32)``, ``pmap(num_workers=4)``.

    Call it on a function (or use :func:`~ember.xcs.compose`) to get a :class:`Mapped`.
    """

    def __init__(self, name: str, options: MapOptions) -> None:
        self.name, self.options = name, options

    def __call__(self, fn: Callable[..., Any]) -> Mapped:
        return Mapped(fn, self.options, name=self.name)

    def __repr__(self) -> str:
        return f"{self.name}({_describe(self.options)})"


class Mapped:
    """``fn`` mapped over the leading batch of its inputs (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], options: MapOptions, *, name: str = "vmap") -> None:
        if isinstance(fn, Transform):
            raise TransformError(
                f"{name}() got the transform {fn!r} instead of a function; use compose(...) to stack transforms"
            )
        if not callable(fn):
            raise TransformError(f"{name}() needs a function or an operator, got {type(fn).__name__}")
        if isinstance(fn, Mapped):  # stacked transforms map the same axis: fuse them
            fn, options = fn.fn, fn.options.under(options)
        self.fn, self.options, self.name = fn, options, name
        functools.update_wrapper(self, fn, updated=())

    def __repr__(self) -> str:
        return f"Mapped({getattr(self.fn, '__name__', type(self.fn).__name__)}, {_describe(self.options)})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        in_axes = 0 if self.options.in_axes is _UNSET else self.options.in_axes
        call = split_call(self.fn, args, kwargs, in_axes)
        if self.options.backend == "ray":
            if not call.host_slots:
                raise TransformError(
                    f"{self.name}(backend='ray') spreads host work (lists of prompts or records) over a Ray cluster; "
                    "these inputs are arrays only, and array work stays on the local devices: drop backend='ray'"
                )
            return self._map_on_ray(call)
        if call.host_slots:
            return self._map_host(call)
        return self._map_arrays(call)

    def _map_on_ray(self, call: BatchedCall) -> Any:
        from ember.xcs._ray_scheduler import map_items  # Ray is imported only when asked for

        caps = [c for c in (self.options.batch_size, self.options.max_in_flight) if c]
        results = map_items(
            self.fn, call.size, call.item, width=min(caps, default=None), name=self.name,
            address=current_execution_options().ray_address,
        )  # fmt: skip
        return assemble(results, call)

    # -- host work ----------------------------------------------------------------------
    def _map_host(self, call: BatchedCall) -> Any:
        options = self.options
        caps = [c for c in (options.batch_size, options.max_in_flight) if c]
        on_mesh = options.explicit_mesh and options.batch_axis is not None
        placement = _local_model_mesh(options) if on_mesh else contextlib.nullcontext()
        with placement:
            if isinstance(self.fn, LMModule):
                results = self._ask_model(self.fn, call, min(caps, default=None))
            else:
                results = self._run_items(call, min(call.size, HOST_WIDTH, *caps))
        return assemble(results, call)

    def _run_items(self, call: BatchedCall, width: int) -> list[Any]:
        """Each item on a worker thread: ``width`` drivers claim items until none is left."""
        results: list[Any] = [None] * call.size
        claim = itertools.count().__next__  # atomic under the GIL: each item is claimed once

        def drive() -> None:
            while (index := claim()) < call.size:
                check_cancelled()
                args, kwargs = call.item(index)
                try:
                    results[index] = self.fn(*args, **kwargs)
                except Exception as error:
                    error.add_note(f"(item {index} of {call.size} in {self.name})")
                    raise

        with TaskGroup() as group:
            for _ in range(width - 1):
                group.spawn(drive)
            drive()  # the caller's thread drives too
        return results

    def _ask_model(self, lm: LMModule, call: BatchedCall, width: int | None) -> list[str]:
        """Prompts straight to the model: every call is started on the I/O loop from this
        thread, no worker thread per item, so only the model's own budget (and ``width``,
        when a transform caps it) bounds how many are in flight."""
        gate = threading.Semaphore(width) if width else None
        futures = []
        with TaskGroup():
            for index in range(call.size):
                while gate is not None and not gate.acquire(timeout=_POLL_S):
                    check_cancelled()
                check_cancelled()
                args, kwargs = call.item(index)
                future = lm.submit(*args, **kwargs)
                if gate is not None:
                    future.add_done_callback(lambda _: gate.release())
                futures.append(future)
        return [future.result().text for future in futures]

    # -- array work ---------------------------------------------------------------------
    def _map_arrays(self, call: BatchedCall) -> Any:
        options, size = self.options, call.size
        step = options.batch_size or size
        if step >= size:
            return self._map_chunk(call)
        return concatenate([self._map_chunk(call.chunk(i, min(i + step, size))) for i in range(0, size, step)], call)

    def _map_chunk(self, call: BatchedCall) -> Any:
        mesh = self.options.mesh
        if mesh is None:
            return _vmapped(self.fn, call, self._out_axes(), self.name)
        spec = (
            self.options.partition_spec
            if self.options.partition_spec is not None
            else PartitionSpec(self.options.batch_axis)
        )
        shards = mesh.shape[self.options.batch_axis] if self.options.batch_axis else 1
        padded = -call.size % shards
        values = {
            key: jax.tree_util.tree_map(
                lambda x, a=axis, k=key: _place(_pad(x, padded, a), mesh, spec, a, k), call.value(key)
            )
            for key, axis in call.array_axes.items()
        }
        args, kwargs = call.rebuild(values)
        dynamic, static = partition((self.fn, args, kwargs), is_array)
        layout = _Layout(static, dataclasses.replace(call, args=(), fields={}), self._out_axes(), self.name)
        out = _sharded(layout, dynamic)
        if padded:
            out = jax.tree_util.tree_map(lambda x: jax.lax.slice_in_dim(x, 0, call.size, axis=layout.out_axes), out)
        return out

    def _out_axes(self) -> int:
        return 0 if self.options.out_axes is _UNSET else self.options.out_axes


def _local_model_mesh(options: MapOptions) -> contextlib.AbstractContextManager[Any]:
    """The embedded model's generations inside split over the mesh's batch axis (imported
    here: only a mapped call on a mesh needs the local model's package)."""
    from ember.local import use_mesh

    return use_mesh(options.mesh, options.batch_axis)


def _vmapped(fn: Callable[..., Any], call: BatchedCall, out_axes: int, name: str) -> Any:
    keys = list(call.array_axes)

    def one_item(*mapped: Any) -> Any:
        args, kwargs = call.rebuild(dict(zip(keys, mapped)))
        return fn(*args, **kwargs)

    try:
        return jax.vmap(one_item, in_axes=tuple(call.array_axes[k] for k in keys), out_axes=out_axes)(
            *(call.value(k) for k in keys)
        )
    except _TRACE_ERRORS as error:
        raise NotTraceableError(
            f"{name}: {getattr(fn, '__name__', type(fn).__name__)} cannot be traced by jax.vmap over its array "
            f"inputs ({type(error).__name__}: it needs concrete values). Pass host inputs as lists to run it item "
            "by item, or call models from traced code through ember.xcs.llm_callback."
        ) from error
    except TypeError as error:
        if "not a valid JAX type" not in str(error):
            raise
        raise NotTraceableError(
            f"{name}: {getattr(fn, '__name__', type(fn).__name__)} returned a value JAX cannot batch ({error}); "
            "with array inputs its outputs must be arrays. Pass host inputs as lists to get lists back."
        ) from error


@dataclasses.dataclass(frozen=True, eq=False)
class _Layout:
    """The static half of a sharded call: the jit's cache key (hashed by structure)."""

    static: Any
    call: BatchedCall
    out_axes: int
    name: str

    def _key(self) -> Hashable:
        leaves, treedef = jax.tree_util.tree_flatten(self.static)
        call = self.call
        return (treedef, tuple(_hashable(leaf) for leaf in leaves), tuple(call.array_axes.items()), call.as_inputs,
                self.out_axes)  # fmt: skip

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Layout) and self._key() == other._key()


def _hashable(leaf: Any) -> Hashable:
    try:
        hash(leaf)
    except TypeError:
        return ("id", id(leaf))
    return leaf


def _run_sharded(layout: _Layout, dynamic: Any) -> Any:
    fn, args, kwargs = combine(dynamic, layout.static)
    fields = kwargs["inputs"] if layout.call.as_inputs else kwargs
    call = dataclasses.replace(layout.call, args=args, fields=fields)
    return _vmapped(fn, call, layout.out_axes, layout.name)


#: One jit for every sharded call: its cache is keyed by the static layout (and shapes).
_sharded = jax.jit(_run_sharded, static_argnums=(0,))


def _pad(x: Any, extra: int, axis: int) -> Any:
    if not extra:
        return x
    n = x.shape[axis]
    return jnp.take(x, jnp.minimum(jnp.arange(n + extra), n - 1), axis=axis)


def _place(x: Any, mesh: Mesh, spec: PartitionSpec, axis: int, key: Any) -> Any:
    """``x`` with its batch axis (``axis``) and the dims after it laid out as ``spec`` says."""
    entries = tuple(spec)[: x.ndim - axis]
    for dim, entry in enumerate(entries[1:], start=axis + 1):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        shards = int(np.prod([mesh.shape[n] for n in names])) if names else 1
        if x.shape[dim] % shards:
            raise BatchAxisError(
                f"{key!r}: dimension {dim} has size {x.shape[dim]}, which the mesh axes {names} ({shards} shards) "
                "do not divide; change the PartitionSpec or the mesh shape"
            )
    sharding = NamedSharding(mesh, PartitionSpec(*((None,) * axis), *entries))
    if isinstance(x, jax.core.Tracer):
        return jax.lax.with_sharding_constraint(x, sharding)
    return jax.device_put(x, sharding)


def _describe(options: MapOptions) -> str:
    parts = []
    if options.in_axes is not _UNSET:
        parts.append(f"in_axes={options.in_axes!r}")
    if options.batch_size:
        parts.append(f"batch_size={options.batch_size}")
    if options.max_in_flight:
        parts.append(f"num_workers={options.max_in_flight}")
    if options.explicit_mesh:
        parts.append(f"mesh={dict(options.mesh.shape)}, partition_spec={options.partition_spec}")
    elif options.mesh is not None:
        parts.append(f"array work over {options.mesh.size} devices")
    if options.backend != "local":
        parts.append(f"backend={options.backend!r}")
    return ", ".join(parts)
