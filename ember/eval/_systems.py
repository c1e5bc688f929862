"""Systems under evaluation: anything that turns a prompt into an answer, behind one async call.

A system is a model id (one call), a NON operator or compact-notation string (a network
of calls), or a plain function. The pipeline awaits ``system.arun(prompt)`` for each item;
model calls inside go through the shared :class:`ModelService`, whose I/O loop holds the
process-wide concurrency and rate budget — the pipeline only decides how many *items* are
in flight, never how many calls. A synchronous function runs on a worker thread (in a copy
of the item's context, see :func:`ember._runtime.to_thread`), so it cannot stall the other
items; a model-id system awaits the service directly (on the I/O loop: no crossing).

What an item cost is measured, not reported: the pipeline runs each item in a usage scope
(:class:`ember._runtime.UsageScope`) that every model call reports to. A system's own
``SystemOutput.usage`` is used only when no call went through Ember (a system that calls
some other API and knows its cost).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ember._runtime import EmberError, UsageStats, to_thread
from ember.models import ModelResponse

if TYPE_CHECKING:
    from ember.models import ModelService

__all__ = ["SystemOutput", "SystemFailure", "System", "ModelSystem", "FunctionSystem"]


class SystemFailure(EmberError):
    """A system failed on one item (e.g. a model's output could not be used): journaled as an error, retried on resume."""


@dataclasses.dataclass(frozen=True, slots=True)
class SystemOutput:
    """An answer, with what it cost when the system knows (calls made outside Ember).

    Calls made through Ember are measured by the pipeline; these fields are for the rest.
    """

    text: str
    usage: UsageStats = dataclasses.field(default_factory=UsageStats)
    calls: int = 0
    attempts: int = 0

    @classmethod
    def of(cls, value: Any) -> SystemOutput:
        """Normalise what a system returned: text, a :class:`ModelResponse`, or a ``SystemOutput``."""
        if isinstance(value, SystemOutput):
            return value
        if isinstance(value, ModelResponse):
            return cls(value.text, value.usage, 1, value.attempts)
        if isinstance(value, str):  # whatever produced it, its cost is not known: never report $0
            return cls(value, UsageStats(cost_usd=None))
        raise TypeError(f"a system must return str, ModelResponse or SystemOutput, got {type(value).__name__}")


@runtime_checkable
class System(Protocol):
    """``name`` labels results; ``spec`` describes the system for the journal (resume checks)."""

    name: str
    spec: str

    async def arun(self, prompt: str) -> SystemOutput: ...


class ModelSystem:
    """One call to ``model_id`` per item; ``params`` (temperature, max_tokens, system, ...) pass through."""

    def __init__(self, model_id: str, *, service: ModelService | None = None, name: str | None = None, **params: Any) -> None:
        self.model_id, self.params = model_id, params
        self.name = name or model_id
        self.spec = f"model:{model_id}" + (f" {sorted(params.items())}" if params else "")
        self._service = service

    @property
    def service(self) -> ModelService:
        if self._service is None:
            from ember._context import get_app_context

            self._service = get_app_context().model_service
        return self._service

    async def arun(self, prompt: str) -> SystemOutput:
        response = await self.service.ainvoke_model(self.model_id, prompt, **self.params)
        return SystemOutput(response.text)

    def __repr__(self) -> str:
        return f"ModelSystem({self.model_id!r})"


class FunctionSystem:
    """A function ``prompt -> str | ModelResponse | SystemOutput``, sync or async.

    Sync functions run on a worker thread (the pipeline's pool, sized to its concurrency).
    """

    def __init__(self, fn: Callable[[str], Any], *, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.spec = f"function:{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', self.name)}"
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)

    async def arun(self, prompt: str) -> SystemOutput:
        if self._is_async:
            return SystemOutput.of(await self.fn(prompt))
        return SystemOutput.of(await to_thread(self.fn, prompt))  # the item's scopes reach the thread

    def __repr__(self) -> str:
        return f"FunctionSystem({self.name!r})"
