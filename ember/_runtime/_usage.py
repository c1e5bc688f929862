"""Usage scopes: every model call reports its tokens and cost to the scopes it ran in.

Evaluation needs the exact cost of each item, whatever the system is: a model id, a NON
network, or a function a user wrote that calls ``models(...)`` itself. Walking an
operator's fields for services to wrap only finds the calls it knows about. Instead, the
model service reports every call to the current :class:`UsageScope`, a
:class:`contextvars.ContextVar`, and to each scope around it. Threads spawned by a
:class:`~ember._runtime.TaskGroup` and tasks on the I/O loop inherit the scope, so calls
anywhere below an item count toward that item, and nowhere else.

A call that failed after its retries still counts its attempts; a call that was answered
counts its tokens and cost, so an item whose third call failed keeps the cost of the two
that were answered. An unknown price makes the scope's cost ``None``, never $0.

>>> from ember._runtime import UsageScope, UsageStats
>>> with UsageScope() as outer:
...     with UsageScope() as inner:
...         inner.record(UsageStats(10, 2, 0.001), attempts=1)
...     outer.record(UsageStats(5, 1, None), attempts=2)
>>> inner.calls, inner.usage.total_tokens, outer.calls, outer.attempts, outer.usage.cost_usd
(1, 12, 2, 3, None)
"""

from __future__ import annotations

import contextvars
import dataclasses
import threading
from types import TracebackType

__all__ = ["UsageStats", "UsageScope", "current_usage_scope"]


@dataclasses.dataclass(frozen=True, slots=True)
class UsageStats:
    """Tokens and cost of one call. ``cost_usd`` is ``None`` when the price is unknown."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: UsageStats) -> UsageStats:
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        return UsageStats(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens, cost)


_current: contextvars.ContextVar[UsageScope | None] = contextvars.ContextVar("ember_usage_scope", default=None)


def current_usage_scope() -> UsageScope | None:
    """The innermost usage scope of this thread or task, or ``None``."""
    return _current.get()


class UsageScope:
    """Totals of the model calls made while this scope (or one inside it) was current.

    ``calls`` counts answered calls (cache hits included, at no cost), ``failed`` the calls
    that raised after their retries, ``attempts`` every request sent for either.
    """

    __slots__ = ("parent", "calls", "failed", "attempts", "usage", "_lock", "_token")

    def __init__(self) -> None:
        self.parent: UsageScope | None = None
        self.calls = self.failed = self.attempts = 0
        self.usage = UsageStats()
        self._lock = threading.Lock()
        self._token: contextvars.Token[UsageScope | None] | None = None

    def __enter__(self) -> UsageScope:
        if self._token is not None:
            raise RuntimeError("a UsageScope can be entered only once at a time")
        self.parent = _current.get()
        self._token = _current.set(self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._token is not None
        _current.reset(self._token)
        self._token = None

    def record(self, usage: UsageStats, *, attempts: int = 1) -> None:
        """An answered call: add it here and to every enclosing scope."""
        scope: UsageScope | None = self
        while scope is not None:
            with scope._lock:
                scope.calls += 1
                scope.attempts += attempts
                scope.usage = scope.usage + usage
            scope = scope.parent

    def record_failure(self, *, attempts: int) -> None:
        """A call that raised after ``attempts`` requests (failed requests are not billed)."""
        scope: UsageScope | None = self
        while scope is not None:
            with scope._lock:
                scope.failed += 1
                scope.attempts += attempts
            scope = scope.parent

    def __repr__(self) -> str:
        return f"UsageScope(calls={self.calls}, failed={self.failed}, attempts={self.attempts}, usage={self.usage})"
