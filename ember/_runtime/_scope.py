"""Cancel scopes: who owns a running call, so that cancelling an owner reaches every call.

Every model call started in Ember attaches its future (an awaited call: its waiting task,
see :meth:`CancelScope.guard`) to the *current* scope, a :class:`contextvars.ContextVar`: threads spawned by a :class:`~ember._runtime.TaskGroup`
and tasks on the I/O loop inherit it. Scopes form a tree. Cancelling one (a sibling
failed, the user pressed Ctrl-C, an evaluation item was abandoned) cancels its own
futures, which cancels their coroutines on the I/O loop and closes their HTTP requests,
then cancels every scope below it. A call started in a scope that is already cancelled
fails at once with :class:`Cancelled` instead of reaching the network.

What cannot be cancelled is plain Python running on a thread (a user's CPU loop): it
stops at its next model call or its next wait on one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Cancelled", "CancelScope", "current_scope", "open_scope", "check_cancelled"]


class Cancelled(concurrent.futures.CancelledError):
    """Raised by work started, or waited on, in a scope that was cancelled.

    A subclass of :class:`concurrent.futures.CancelledError`, which a cancelled model
    call's future raises, so one ``except`` handles both.
    """


class CancelScope:
    """A node of the cancellation tree; see the module docstring."""

    __slots__ = ("parent", "reason", "_children", "_futures", "_lock", "_cancelled", "_listeners")

    def __init__(self, parent: CancelScope | None = None) -> None:
        self.parent = parent
        self.reason: str | None = None
        self._children: set[CancelScope] = set()
        #: Futures attached, and tasks awaiting under :meth:`guard` (a :class:`_Waiter`): what cancel() cancels.
        self._futures: set[Any] = set()
        self._listeners: list[Any] = []
        self._lock = threading.Lock()
        self._cancelled = False
        if parent is not None:
            parent._adopt(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _adopt(self, child: CancelScope) -> None:
        with self._lock:
            cancelled = self._cancelled
            if not cancelled:
                self._children.add(child)
        if cancelled:
            child.cancel(self.reason)

    def close(self) -> None:
        """Detach from the parent (the scope's block has ended)."""
        if self.parent is not None:
            with self.parent._lock:
                self.parent._children.discard(self)

    def attach(self, future: concurrent.futures.Future[Any]) -> None:
        """Make ``future`` owned by this scope: cancelled with it, forgotten when done."""
        with self._lock:
            owned = not self._cancelled
            if owned:
                self._futures.add(future)
        if owned:  # outside the lock: a future already done runs _forget, which takes it, at once
            future.add_done_callback(self._forget)
        else:
            future.cancel()

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` in the current task as work owned by this scope.

        The async twin of :meth:`attach`, for a caller that awaits rather than holds a
        future: cancelling the scope, from any thread, cancels the waiting task (and so
        whatever it awaits, e.g. a model call on the I/O loop and its HTTP request), and the
        wait raises :class:`Cancelled`. A cancellation of the task by anyone else stays an
        ``asyncio.CancelledError``. Costs two lock round trips, no future: the evaluation
        pipeline awaits every model call this way.
        """
        waiter = _Waiter(asyncio.get_running_loop(), asyncio.current_task())
        with self._lock:
            owned = not self._cancelled
            if owned:
                self._futures.add(waiter)
        if not owned:  # as attach does: cancelled at its first wait, which raises Cancelled
            waiter.cancel()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if waiter.by_scope and waiter.task.uncancel() == 0:
                raise Cancelled(self.reason or "cancelled") from None
            raise
        finally:
            waiter.waiting = False
            with self._lock:
                self._futures.discard(waiter)

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def on_cancel(self, callback: Any) -> None:
        """Call ``callback()`` when the scope is cancelled (at once if it already is)."""
        with self._lock:
            if not self._cancelled:
                self._listeners.append(callback)
                return
        callback()

    def cancel(self, reason: str | None = None) -> None:
        """Cancel this scope, its futures and every scope below it (idempotent)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled, self.reason = True, reason
            futures, children, listeners = list(self._futures), list(self._children), self._listeners
            self._futures.clear()
            self._children.clear()
            self._listeners = []
        for future in futures:
            future.cancel()
        for child in children:
            child.cancel(reason)
        for callback in listeners:
            callback()

    def check(self) -> None:
        """Raise :class:`Cancelled` if this scope or one above it was cancelled."""
        if self._cancelled:
            raise Cancelled(self.reason or "cancelled")


class _Waiter:
    """A task awaiting under :meth:`CancelScope.guard`, cancellable like a future from any thread."""

    __slots__ = ("loop", "task", "waiting", "by_scope")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        assert task is not None, "CancelScope.guard must be awaited in a task"
        self.loop, self.task, self.waiting, self.by_scope = loop, task, True, False

    def cancel(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing is waiting
            self.loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:  # on the task's loop, so it cannot race the end of the wait
        if self.waiting:
            self.by_scope = True
            self.task.cancel()


_current: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar("ember_cancel_scope", default=None)


def current_scope() -> CancelScope | None:
    """The innermost scope of this thread or task, or ``None`` outside any."""
    return _current.get()


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the current scope was cancelled; cheap, call it often."""
    scope = _current.get()
    if scope is not None:
        scope.check()


@contextlib.contextmanager
def open_scope() -> Iterator[CancelScope]:
    """A child of the current scope, current for the block."""
    scope = CancelScope(_current.get())
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
        scope.close()
