"""The configuration manager: layered sources, runtime and scoped overrides, cheap reads.

Reads happen on every model call, so they take no lock and do no validation: a manager
holds an immutable snapshot (layers, their merge, the validated :class:`EmberConfig`) and
replaces it whole, under a lock, on ``update_config`` or ``reload``. Scoped overrides live
in a :class:`contextvars.ContextVar`, so each thread and each asyncio task sees only its
own; a task created inside a scope inherits it, as contextvars are copied into new tasks.

What is read when (for a manager over the live environment, the default):

- files (``ember.yaml``, ``~/.ember/config.yaml``, ``$EMBER_CONFIG``) and the environment
  are read when the manager is created and on :meth:`ConfigManager.reload`, which
  ``initialize_ember()`` and every new ``ModelService`` built without an explicit manager
  call;
- the environment is also checked on every read: if any variable changed since it was
  last read (a notebook's ``os.environ["OPENAI_API_KEY"] = ...``), the manager reloads
  before answering. The check compares the process environment with a copy, about
  0.2 us, where re-reading the relevant variables would cost about 20 us per model call;
- a file edited later is not seen until one of the reloads above.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import threading
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, overload

from pydantic import BaseModel

from ember.config._errors import ConfigError
from ember.config._merge import Layer, deep_merge, merge_layers, validate
from ember.config._schema import SECTIONS, AppConfig, DataConfig, EmberConfig, ModelRegistryConfig
from ember.config._sources import Sources

__all__ = ["ConfigManager", "create_config_manager", "get_config_manager", "set_config_manager"]

Overrides = Mapping[str, Mapping[str, Any]]

#: Shared by every manager, so a revision is never reused, even after set_config_manager.
_serials = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    generation: int
    layers: tuple[Layer, ...]
    data: dict[str, Any]
    config: EmberConfig


class _Scope:
    """One active ``scoped()`` block: its overrides stacked on those of the enclosing block.

    ``cached`` is the validated config for one snapshot generation; a concurrent
    ``update_config`` changes the generation and so forces a fresh merge.
    """

    __slots__ = ("serial", "layers", "data", "cached")

    def __init__(self, parent: _Scope | None, overrides: Overrides) -> None:
        self.serial = next(_serials)
        layer = Layer("scoped() override", overrides)
        self.layers = (layer,) if parent is None else (*parent.layers, layer)
        self.data = dict(overrides) if parent is None else deep_merge(parent.data, overrides)
        self.cached: tuple[int, EmberConfig] | None = None


def _check_section(section: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(
            f"unknown config section {section!r}; sections are {', '.join(sorted(SECTIONS))}",
            keys=(section,),
        )


# The process environment as os.environ stores it (bytes on POSIX): comparing it with a
# copy is the cheapest exact test for "some variable changed".
_RAW_ENVIRON: Mapping[Any, Any] = getattr(os.environ, "_data", os.environ)


def _environment_copy() -> dict[Any, Any]:
    return dict(_RAW_ENVIRON)


class ConfigManager:
    """Typed, validated configuration merged from every source; create with :func:`create_config_manager`.

    Precedence, highest first: scoped overrides, runtime overrides (``update_config``),
    environment variables, the ``EMBER_CONFIG`` file, the user file, the project file, the
    schema defaults.
    """

    def __init__(self, sources: Sources, *, overrides: Overrides | None = None) -> None:
        self._sources = sources
        self._lock = threading.Lock()
        self._scope: ContextVar[_Scope | None] = ContextVar("ember_config_scope", default=None)
        self._live = sources.environ is None
        self._environ_seen = _environment_copy() if self._live else None
        self._base_layers = sources.read()
        self._overrides: dict[str, Any] = copy.deepcopy(dict(overrides or {}))
        self._snapshot = self._build(self._base_layers, self._overrides)

    @staticmethod
    def _build(base_layers: tuple[Layer, ...], overrides: dict[str, Any]) -> _Snapshot:
        layers = (*base_layers, Layer("runtime override (update_config)", overrides))
        data = merge_layers(layers)
        return _Snapshot(next(_serials), layers, data, validate(data, layers))

    @overload
    def get_config(self, section: None = None) -> EmberConfig: ...
    @overload
    def get_config(self, section: Literal["model_registry"]) -> ModelRegistryConfig: ...
    @overload
    def get_config(self, section: Literal["app"]) -> AppConfig: ...
    @overload
    def get_config(self, section: Literal["data"]) -> DataConfig: ...
    @overload
    def get_config(self, section: str) -> BaseModel: ...

    def get_config(self, section: str | None = None) -> BaseModel:
        """One section (``"model_registry"``, ``"app"``, ...) or, with none, the whole config.

        The result is frozen and shared: the same object comes back until the effective
        configuration changes.
        """
        self._follow_environment()
        config = self._effective()
        if section is None:
            return config
        _check_section(section)
        return getattr(config, section)

    def _effective(self) -> EmberConfig:
        snapshot = self._snapshot
        scope = self._scope.get()
        if scope is None:
            return snapshot.config
        cached = scope.cached
        if cached is not None and cached[0] == snapshot.generation:
            return cached[1]
        config = validate(deep_merge(snapshot.data, scope.data), (*snapshot.layers, *scope.layers))
        scope.cached = (snapshot.generation, config)
        return config

    @property
    def revision(self) -> tuple[int, int]:
        """Changes whenever the configuration this context sees may have changed.

        Code that derives something from the config (clients, limiters) can keep it keyed
        by this value. Values are never reused, across managers too.
        """
        self._follow_environment()
        scope = self._scope.get()
        return (self._snapshot.generation, 0 if scope is None else scope.serial)

    def _follow_environment(self) -> None:
        if self._live and self._environ_seen != _RAW_ENVIRON:
            self.reload()

    def update_config(self, section: str, values: Mapping[str, Any]) -> None:
        """Deep-merge ``values`` into ``section`` for everyone, until the process ends.

        Validated before it takes effect: a bad value raises :class:`ConfigError` and
        changes nothing.
        """
        _check_section(section)
        with self._lock:
            overrides = deep_merge(self._overrides, {section: copy.deepcopy(values)})
            self._snapshot = self._build(self._base_layers, overrides)
            self._overrides = overrides

    def reload(self) -> None:
        """Read files and environment again; runtime overrides are kept."""
        with self._lock:
            environ_seen = _environment_copy() if self._live else None
            base_layers = self._sources.read()
            self._snapshot = self._build(base_layers, self._overrides)
            self._base_layers, self._environ_seen = base_layers, environ_seen

    @contextlib.contextmanager
    def scoped(self, overrides: Overrides) -> Iterator[EmberConfig]:
        """Apply ``overrides`` (``{section: {...}}``) in this thread or task only, for the block.

        Nestable; tasks created inside the block inherit it. Yields the effective config,
        validated on entry so that a bad override fails at the ``with``.
        """
        token = self._scope.set(_Scope(self._scope.get(), copy.deepcopy(dict(overrides))))
        try:
            yield self._effective()
        finally:
            self._scope.reset(token)

    def __repr__(self) -> str:
        return f"ConfigManager(revision={self.revision})"


def create_config_manager(
    *,
    user_file: str | Path | None = None,
    project_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Overrides | None = None,
) -> ConfigManager:
    """A manager over the standard sources; each ``None`` means standard discovery.

    ``user_file`` defaults to ``~/.ember/config.yaml``, ``project_file`` to ``./ember.yaml``
    (both looked up at creation and on each ``reload``; missing ones are skipped),
    ``environ`` to ``os.environ``; ``overrides`` are initial runtime overrides.
    """
    sources = Sources(
        user_file=None if user_file is None else Path(user_file).expanduser(),
        project_file=None if project_file is None else Path(project_file).expanduser(),
        environ=environ,
    )
    return ConfigManager(sources, overrides=overrides)


_default: ConfigManager | None = None
_default_lock = threading.Lock()


def get_config_manager() -> ConfigManager:
    """The process-wide manager, created with standard discovery on first use."""
    global _default
    manager = _default
    if manager is None:
        with _default_lock:
            if _default is None:
                _default = create_config_manager()
            manager = _default
    return manager


def set_config_manager(manager: ConfigManager | None) -> None:
    """Replace the process-wide manager; ``None`` makes the next use create a fresh one."""
    global _default
    with _default_lock:
        _default = manager
