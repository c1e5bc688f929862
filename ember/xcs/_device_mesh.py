"""``DeviceMesh``: a ``jax.sharding.Mesh`` built from device names.

Ember does not wrap JAX's mesh: what ``DeviceMesh`` returns *is* a ``jax.sharding.Mesh``, so
it goes straight into ``NamedSharding``, ``jax.shard_map`` and ``jax.set_mesh``. What it adds
is reading devices the way people write them (``"gpu:0"``, ``"cpu:3"``), with an error that
lists the devices there are when a name is wrong, and default axis names: ``("batch",)``
for one dimension, ``("batch", "model")`` for two.

>>> mesh = DeviceMesh(devices=["cpu:0", "cpu:1", "cpu:2", "cpu:3"], mesh_shape=(2, 2))
>>> dict(mesh.shape)
{'batch': 2, 'model': 2}
>>> import jax
>>> isinstance(mesh, jax.sharding.Mesh)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from ember.xcs._transform_errors import TransformError, UnknownDeviceError

__all__ = ["DeviceMesh"]

_DEFAULT_AXES = {1: ("batch",), 2: ("batch", "model")}


def DeviceMesh(
    devices: Sequence[str | jax.Device] | None = None,
    mesh_shape: Sequence[int] | None = None,
    axis_names: Sequence[str] | None = None,
) -> Mesh:
    """A ``jax.sharding.Mesh`` of ``devices`` (names or ``jax.Device``s).

    Without ``devices``, the mesh takes the first devices of the default backend that
    ``mesh_shape`` holds (all of them without a shape). ``mesh_shape`` defaults to one axis
    over every device; ``axis_names`` to ``("batch",)`` or ``("batch", "model")``. The
    product of ``mesh_shape`` must be the number of devices.
    """
    if devices is None:
        every = list(jax.devices())
        wanted = int(np.prod(tuple(mesh_shape))) if mesh_shape is not None else len(every)
        if wanted > len(every):
            raise TransformError(
                f"DeviceMesh: mesh_shape {tuple(mesh_shape or ())} needs {wanted} devices; there are {len(every)}: "
                + ", ".join(_name(d) for d in every)
            )
        devices = every[:wanted]
    resolved = [_device(d) for d in devices]
    if not resolved:
        raise TransformError("DeviceMesh needs at least one device")
    seen = [d for i, d in enumerate(resolved) if d in resolved[:i]]
    if seen:
        raise TransformError(f"DeviceMesh: device {_name(seen[0])} is listed twice")
    shape = tuple(mesh_shape) if mesh_shape is not None else (len(resolved),)
    if any(not isinstance(n, int) or n < 1 for n in shape) or int(np.prod(shape)) != len(resolved):
        raise TransformError(f"DeviceMesh: mesh_shape {shape} does not hold the {len(resolved)} devices given")
    names = tuple(axis_names) if axis_names is not None else _DEFAULT_AXES.get(len(shape))
    if names is None:
        raise TransformError(f"DeviceMesh: a {len(shape)}-dimensional mesh needs axis_names")
    if len(names) != len(shape) or len(set(names)) != len(names):
        raise TransformError(
            f"DeviceMesh: axis_names {names} must be {len(shape)} distinct names, one per mesh dimension"
        )
    grid = np.empty(len(resolved), dtype=object)
    grid[:] = resolved
    return Mesh(grid.reshape(shape), names)


def _name(device: jax.Device) -> str:
    return f"{device.platform}:{device.id}"


def _device(spec: Any) -> jax.Device:
    if isinstance(spec, jax.Device):
        return spec
    if not isinstance(spec, str):
        raise TransformError(f"DeviceMesh: a device is a name such as 'gpu:0' or a jax.Device, got {spec!r}")
    available = [f"{d.platform}:{i}" for backend in _backends() for i, d in enumerate(jax.devices(backend))]
    platform, _, index = spec.strip().lower().partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    if not index.isdigit():
        raise UnknownDeviceError(spec, available, "a device is written platform:index, such as 'gpu:0'")
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        raise UnknownDeviceError(spec, available, f"this process has no {platform!r} backend") from None
    if int(index) >= len(devices):
        raise UnknownDeviceError(spec, available, f"there are {len(devices)} {platform} device(s)")
    return devices[int(index)]


def _backends() -> list[str]:
    names = []
    for backend in ("cpu", "gpu", "tpu"):
        try:
            jax.devices(backend)
        except RuntimeError:
            continue
        names.append(backend)
    return names
