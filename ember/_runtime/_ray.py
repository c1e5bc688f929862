"""Ray, the distributed backend: imported only when a caller asks for it.

Ember schedules onto a Ray cluster that users already run; it never starts a home-made one.
:func:`connect_ray` joins the cluster at ``address`` (or ``RAY_ADDRESS``), or starts a local
instance when there is none, and is a no-op once Ray is initialised in this process (a
user's own ``ray.init(...)`` wins). Without Ray installed, asking for the backend raises
:class:`RayNotInstalledError`, which names the extra to install.

Secrets never travel as task arguments: workers read API keys from their own environment.
A local instance's workers inherit the driver's environment; on an existing cluster, set
the keys in the nodes' environment (or a ``runtime_env`` the operator controls).
"""

from __future__ import annotations

import os
import threading
from types import ModuleType

from ember._runtime._errors import EmberError

__all__ = ["RAY_EXTRA", "RayNotInstalledError", "connect_ray", "require_ray"]

#: The pip extra that brings Ray.
RAY_EXTRA = "ember-ai[ray]"
_lock = threading.Lock()


class RayNotInstalledError(EmberError, ImportError):
    """The Ray backend was asked for, but Ray is not installed."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or :class:`RayNotInstalledError` naming the extra to install."""
    try:
        import ray
    except ImportError as error:
        raise RayNotInstalledError(
            f"the Ray backend needs Ray, which is not installed: pip install '{RAY_EXTRA}' ({error})"
        ) from None
    return ray


def connect_ray(address: str | None = None, *, num_cpus: int | None = None) -> ModuleType:
    """Ray, initialised: joined to ``address`` (or ``$RAY_ADDRESS``), else a local instance.

    Idempotent: if Ray is already initialised in this process, that connection is used as is.
    ``num_cpus`` sizes a local instance (default: Ray's, the machine's CPU count).
    """
    ray = require_ray()
    with _lock:
        if not ray.is_initialized():
            target = address or os.environ.get("RAY_ADDRESS") or None
            options: dict = {"include_dashboard": False, "log_to_driver": False}
            if target is None and num_cpus is not None:
                options["num_cpus"] = num_cpus
            ray.init(address=target, **options)
    return ray
