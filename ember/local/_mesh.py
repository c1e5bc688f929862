"""The current mesh: which devices the local model's batched generations are split over.

Code far above the model (a transform over prompts, an evaluation run) knows there is a
mesh; the code that calls the model (a provider, an operator, a user's function) does not,
and should not have to pass one through every layer. So the mesh is a context variable:
``with use_mesh(mesh):`` around host work, and every request made inside it (on this
thread, in tasks and threads that copy the context, and on Ember's I/O loop, which runs
each call in a copy of its caller's context) is generated with ``mesh=``, its rows split
over the mesh's batch axis. Other axes of the mesh replicate.

Sharding changes where rows run, never what they compute: greedy tokens equal the
unsharded ones (see :mod:`ember.local._generate`), so nothing that identifies results
(journals, caches) needs to know the mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

__all__ = ["MeshSpec", "batch_mesh", "current_mesh", "use_mesh"]


class MeshSpec(NamedTuple):
    """A mesh and the axis that generation splits the batch over."""

    mesh: Mesh
    batch_axis: str


_current: contextvars.ContextVar[MeshSpec | None] = contextvars.ContextVar("ember_local_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, batch_axis: str = "batch") -> Iterator[MeshSpec | None]:
    """Generate the local model's batches inside this block split over ``mesh``'s ``batch_axis``.

    ``None`` turns sharding off inside the block (e.g. under an outer ``use_mesh``). A mesh
    without ``batch_axis`` is refused here, where the mistake is, not in a batch later.
    """
    if mesh is not None and batch_axis not in mesh.axis_names:
        raise ValueError(f"mesh has axes {mesh.axis_names}, not the batch axis {batch_axis!r}")
    spec = None if mesh is None else MeshSpec(mesh, batch_axis)
    token = _current.set(spec)
    try:
        yield spec
    finally:
        _current.reset(token)


def current_mesh() -> MeshSpec | None:
    """The innermost :func:`use_mesh` of this context, or ``None`` (unsharded)."""
    return _current.get()


def batch_mesh(devices: int | Mesh | None, batch_axis: str = "batch") -> Mesh | None:
    """A mesh for ``devices``: a :class:`Mesh` as it is, an int N as the first N devices of the
    default backend on a 1-D ``batch_axis`` mesh, and ``None`` or 1 as no mesh (one device
    gains nothing from a mesh and would cost a second copy of the weights on it).

    Raises ``ValueError`` when N exceeds the devices there are, naming them.
    """
    if devices is None or isinstance(devices, Mesh):
        if devices is not None and batch_axis not in devices.axis_names:
            raise ValueError(f"mesh has axes {devices.axis_names}, not the batch axis {batch_axis!r}")
        return devices
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a jax.sharding.Mesh or an integer >= 1, got {devices!r}")
    available = jax.devices()
    if devices > len(available):
        raise ValueError(
            f"{devices} devices asked for, but {len(available)} are available: {describe_devices(available)}"
        )
    if devices == 1:
        return None
    return Mesh(np.array(available[:devices]), (batch_axis,))


def describe_devices(devices: list | None = None) -> str:
    """``cpu:0, cpu:1, ...``: the devices of the default backend, for messages."""
    devices = jax.devices() if devices is None else devices
    return ", ".join(f"{d.platform}:{d.id}" for d in devices)
