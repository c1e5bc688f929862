"""ExecutionOptions: how ``execute_graph`` runs a graph, set per call or for a block.

``execution_options(**overrides)`` validates at once and works two ways:

- as a context manager, it sets the options for the block (a :class:`contextvars.ContextVar`,
  so threads and asyncio tasks each see their own); nested blocks merge with the enclosing
  options, the inner values winning;
- as a value, ``execute_graph(graph=..., options=execution_options(scheduler="wave"))``
  applies its overrides on top of the options current at the call.

>>> from ember.xcs import execution_options, current_execution_options
>>> with execution_options(scheduler="wave"):
...     with execution_options(max_workers=4):
...         current = current_execution_options()
>>> current.scheduler, current.max_workers, current_execution_options().scheduler
('wave', 4, 'auto')
>>> execution_options(scheduler="paralel")
Traceback (most recent call last):
...
ember.xcs._errors.ExecutionOptionsError: unknown scheduler 'paralel'; schedulers: auto, sequential, wave, parallel, ray. Did you mean: parallel?
"""

from __future__ import annotations

import contextvars
import dataclasses
from types import TracebackType
from typing import Any, Literal

from ember._runtime import close_matches, did_you_mean
from ember.xcs._errors import ExecutionOptionsError

__all__ = ["ExecutionOptions", "current_execution_options", "execution_options"]

SCHEDULERS = ("auto", "sequential", "wave", "parallel", "ray")
ON_ERROR = ("cancel_dependents", "cancel_all")


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutionOptions:
    """``scheduler``: which scheduler runs the graph ("auto" picks, see ``docs/xcs.md``);
    ``max_workers``: at most this many nodes run at once (None: 32; with "ray", no cap beyond
    the cluster's CPUs); ``timeout``: seconds for the whole run (None: no limit); ``on_error``:
    a failed node cancels only the nodes that depend on it ("cancel_dependents") or the whole
    run ("cancel_all"); ``ray_address``: the Ray cluster "ray" (and ``pmap(backend="ray")``)
    joins (None: ``$RAY_ADDRESS``, else a local instance; ignored once Ray is initialised)."""

    scheduler: Literal["auto", "sequential", "wave", "parallel", "ray"] = "auto"
    max_workers: int | None = None
    timeout: float | None = None
    on_error: Literal["cancel_dependents", "cancel_all"] = "cancel_dependents"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ExecutionOptionsError(
                f"unknown scheduler {self.scheduler!r}; schedulers: {', '.join(SCHEDULERS)}."
                f"{did_you_mean(close_matches(str(self.scheduler), SCHEDULERS))}"
            )
        if self.on_error not in ON_ERROR:
            raise ExecutionOptionsError(
                f"unknown on_error {self.on_error!r}; choices: {', '.join(ON_ERROR)}."
                f"{did_you_mean(close_matches(str(self.on_error), ON_ERROR))}"
            )
        if self.max_workers is not None and (
            isinstance(self.max_workers, bool) or not isinstance(self.max_workers, int) or self.max_workers < 1
        ):
            raise ExecutionOptionsError(f"max_workers must be a positive integer or None, got {self.max_workers!r}")
        if self.timeout is not None and (
            isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or self.timeout <= 0
        ):
            raise ExecutionOptionsError(f"timeout must be a positive number of seconds or None, got {self.timeout!r}")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address):
            raise ExecutionOptionsError(f"ray_address must be a non-empty string or None, got {self.ray_address!r}")

    def merged(self, overrides: dict[str, Any]) -> ExecutionOptions:
        return dataclasses.replace(self, **overrides) if overrides else self


_FIELDS = tuple(f.name for f in dataclasses.fields(ExecutionOptions))
_DEFAULT = ExecutionOptions()
_current: contextvars.ContextVar[ExecutionOptions | None] = contextvars.ContextVar("ember_xcs_options", default=None)
# The tokens of the blocks entered in this context (a stack), so one override object can be
# entered from several threads or tasks at once.
_tokens: contextvars.ContextVar[tuple[contextvars.Token[ExecutionOptions | None], ...]] = contextvars.ContextVar(
    "ember_xcs_option_tokens", default=()
)


def current_execution_options() -> ExecutionOptions:
    """The options in effect here (the defaults outside any ``execution_options`` block)."""
    return _current.get() or _DEFAULT


class OptionOverrides:
    """What ``execution_options(...)`` returns: validated overrides, usable as a block or a value."""

    __slots__ = ("overrides",)

    def __init__(self, overrides: dict[str, Any]) -> None:
        unknown = [k for k in overrides if k not in _FIELDS]
        if unknown:
            raise ExecutionOptionsError(
                f"unknown execution option {unknown[0]!r}; options: {', '.join(_FIELDS)}."
                f"{did_you_mean(close_matches(unknown[0], _FIELDS))}"
            )
        ExecutionOptions().merged(overrides)  # validate now, not at first use
        self.overrides = dict(overrides)

    def resolve(self, base: ExecutionOptions | None = None) -> ExecutionOptions:
        """These overrides on top of ``base`` (default: the options current here)."""
        return (base or current_execution_options()).merged(self.overrides)

    def __enter__(self) -> ExecutionOptions:
        options = self.resolve()
        _tokens.set((*_tokens.get(), _current.set(options)))
        return options

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, token = _tokens.get()
        _tokens.set(tuple(rest))
        _current.reset(token)

    def __repr__(self) -> str:
        return f"execution_options({', '.join(f'{k}={v!r}' for k, v in self.overrides.items())})"


def execution_options(**overrides: Any) -> OptionOverrides:
    """Options for a block (``with``) or for one call (``execute_graph(options=...)``)."""
    return OptionOverrides(overrides)
