"""TaskGroup: structured fan-out for synchronous code, with trio's nursery semantics.

Operators are plain synchronous Python, yet an ensemble must have all its calls in flight
at once and a ``Parallel`` must run its branches together. A :class:`TaskGroup` owns both
kinds of child: model calls started inside its block (they attach to its cancel scope, see
:mod:`ember._runtime._scope`) and functions handed to :meth:`TaskGroup.spawn`, which run on
a shared pool of worker threads. Leaving the block waits for every child, and:

- **A failure cancels the siblings.** The first child to fail cancels the group's scope:
  pending model calls are cancelled on the I/O loop, which closes their HTTP requests, and
  spawned functions stop at their next model call. The block then raises that first
  failure (not the cancellations it caused), so callers see one typed error.
- **Cancellation propagates.** A group's scope is a child of the scope it was opened in, so
  cancelling an outer group, or an evaluation item, reaches every call below it.
- **Ctrl-C stops it.** ``KeyboardInterrupt`` while the block waits cancels everything in the
  group before propagating; cancelled children are waited for at most about a second.

There is no thread pool per call. Spawned functions share one pool of daemon threads, and
the waiting thread runs any child no worker has picked up yet itself. Nested groups
therefore cannot deadlock on a full pool, and a group of one runs inline.

>>> from ember._runtime import TaskGroup
>>> with TaskGroup() as group:
...     squares = [group.spawn(pow, n, 2) for n in range(4)]
>>> [s.result() for s in squares]
[0, 1, 4, 9]
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from ember._runtime._scope import Cancelled, CancelScope, _current

__all__ = ["TaskGroup"]

T = TypeVar("T")
logger = logging.getLogger("ember.runtime")
#: How long a cancelled group waits for children still running before it lets them go.
_GRACE_S = 1.0
_POLL_S = 0.25


class _GroupScope(CancelScope):
    """The group's scope: also tells the group about every call attached to it."""

    __slots__ = ("group",)

    def __init__(self, parent: CancelScope | None, group: TaskGroup) -> None:
        self.group = group
        super().__init__(parent)

    def attach(self, future: concurrent.futures.Future[Any]) -> None:
        super().attach(future)
        self.group._watch(future)


class _Child:
    """One spawned function: claimed exactly once, by a worker or by the waiting thread."""

    __slots__ = ("fn", "args", "kwargs", "context", "future", "_claimed")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, context: contextvars.Context) -> None:
        self.fn, self.args, self.kwargs, self.context = fn, args, kwargs, context
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._claimed = threading.Lock()

    def claim(self) -> bool:
        return self._claimed.acquire(blocking=False)

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.context.run(self.fn, *self.args, **self.kwargs)
        except BaseException as error:  # delivered to the group, which decides what to raise
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class _Workers:
    """Daemon threads shared by every group; one is started whenever queued jobs outnumber idle ones.

    At the cap, jobs wait for a worker, or for the group that spawned them to run them itself
    (see :meth:`TaskGroup._steal`): children that must all run at the same moment (a barrier)
    can then stall, which 64 workers make unlikely for the fan-outs operators do.
    """

    def __init__(self, max_workers: int = 64, idle_s: float = 30.0) -> None:
        self._jobs: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0
        self._max, self._idle_s = max_workers, idle_s

    def put(self, child: _Child) -> None:
        self._jobs.put(child)
        with self._lock:  # one idle worker per queued job, or a new one while under the cap
            if self._jobs.qsize() <= self._idle or self._count >= self._max:
                return
            self._count += 1
        threading.Thread(target=self._work, name=f"ember-worker-{self._count}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                child = self._jobs.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    self._count -= 1
                return
            with self._lock:
                self._idle -= 1
            if child.claim():
                child.run()


_workers = _Workers()


class TaskGroup:
    """A nursery for synchronous code: see the module docstring.

    ``spawn`` returns a :class:`concurrent.futures.Future`; read results after the block.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._children: list[_Child] = []
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._failure: BaseException | None = None
        self._draining = False  # after a cancel: every finished child matters to the waiter
        self._scope: _GroupScope | None = None
        self._token: contextvars.Token[CancelScope | None] | None = None

    # -- the block --------------------------------------------------------------------
    def __enter__(self) -> TaskGroup:
        if self._scope is not None:
            raise RuntimeError("a TaskGroup can be entered only once")
        self._scope = _GroupScope(_current.get(), self)
        self._scope.on_cancel(self._wake)
        self._token = _current.set(self._scope)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> bool:
        scope = self._scope
        assert scope is not None and self._token is not None
        _current.reset(self._token)
        try:
            if error is None:
                self._wait_all(scope)
            else:
                scope.cancel(f"{type(error).__name__} in the TaskGroup's block")
                self._wait_cancelled()
        except BaseException as interrupt:  # Ctrl-C (or a cancel from above) while waiting
            scope.cancel(f"{type(interrupt).__name__} while waiting for the TaskGroup")
            self._wait_cancelled()
            raise
        finally:
            scope.close()
        failure = self._failure
        if failure is not None and (error is None or isinstance(error, concurrent.futures.CancelledError)):
            raise failure
        if error is None and scope.cancelled:  # cancelled from above, not by a failure of ours
            raise Cancelled(scope.reason or "cancelled")
        return False

    # -- children ---------------------------------------------------------------------
    def spawn(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` concurrently, in a copy of the caller's context."""
        scope = self._scope
        if scope is None or _current.get() is not scope:
            raise RuntimeError("TaskGroup.spawn must be called inside the group's with-block")
        scope.check()
        child = _Child(fn, args, kwargs, contextvars.copy_context())
        self._children.append(child)
        self._watch(child.future)
        _workers.put(child)
        return child.future

    def _watch(self, future: concurrent.futures.Future[Any]) -> None:
        with self._cv:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        failed = not future.cancelled() and future.exception() is not None
        with self._cv:
            self._pending.discard(future)
            if failed and self._failure is None:
                self._failure = future.exception()
            # Wake the waiter only when it has something to do: each wake-up is a GIL hand-off
            # that the I/O loop's thread pays for (measured: 8% of an ensemble eval's CPU).
            if failed or not self._pending or self._draining:
                self._cv.notify_all()
        if failed and self._scope is not None:
            self._scope.cancel(f"a sibling failed with {type(future.exception()).__name__}")

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # -- waiting ----------------------------------------------------------------------
    def _steal(self) -> None:
        """Run children no worker has started, here: progress never waits on the pool."""
        for child in reversed(self._children):
            if self._failure is not None or (self._scope is not None and self._scope.cancelled):
                return
            if child.claim():
                child.run()

    def _wait_all(self, scope: CancelScope) -> None:
        self._steal()
        with self._cv:
            while self._pending and self._failure is None and not scope.cancelled:
                # No timeout: every event that ends the wait notifies, and on POSIX Ctrl-C
                # interrupts a lock wait, so polling would only cost idle wake-ups.
                self._cv.wait()
        if self._failure is not None or scope.cancelled:
            self._wait_cancelled()

    def _wait_cancelled(self) -> None:
        """After a cancel: unstarted children never run; running ones get a short grace."""
        with self._cv:
            self._draining = True
        for child in self._children:
            if child.claim():
                child.future.cancel()
        deadline = time.monotonic() + _GRACE_S
        with self._cv:
            while any(not c.future.done() for c in self._children):
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("TaskGroup: %d cancelled child(ren) still running; not waiting for them",
                                   sum(not c.future.done() for c in self._children))
                    return
                self._cv.wait(min(left, _POLL_S))
