"""A run hosted on Ember's I/O loop, waited for from another thread or event loop.

Evaluation items run on the I/O loop, where every model call is made, so their calls
cross no loop. The caller waits elsewhere -- a plain thread (:func:`run_sync`, the CLI)
or the caller's own event loop (``aevaluate``) -- and must be able to stop the run. A
plain ``submit``/``run_on_io_loop`` hands back control the moment the run is cancelled,
while the run is still winding down (cancelling its calls, giving the journal back); a
caller that then opens the journal finds it taken. So the run reports its outcome itself,
and a cancelled wait waits a little longer, for that outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from ember._runtime import submit

__all__ = ["Hosted"]

T = TypeVar("T")
#: How long a cancelled wait waits for the run to wind down before it lets it go.
WIND_DOWN_S = 5.0


class Hosted(Generic[T]):
    """``coro`` started on the I/O loop; :meth:`result` or :meth:`wait` for it, cancelling it if interrupted."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._started = False
        self._outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._task = submit(self._host(coro))

    async def _host(self, coro: Coroutine[Any, Any, T]) -> None:
        self._started = True  # from here on, the outcome will be set: a cancelled wait may wait for it
        try:
            self._outcome.set_result(await coro)
        except BaseException as error:  # cancellation too: the waiter raises it
            self._outcome.set_exception(error)

    def result(self) -> T:
        """Block until the run ends; an interrupt (Ctrl-C) cancels it, waits for it to wind down, and propagates."""
        try:
            return self._outcome.result()
        except BaseException:
            self._task.cancel()
            if self._started:
                concurrent.futures.wait([self._outcome], timeout=WIND_DOWN_S)
            raise

    async def wait(self) -> T:
        """Await the run's end from any event loop; cancelling the awaiting task cancels the run, as above."""
        outcome = asyncio.wrap_future(self._outcome)
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            self._task.cancel()
            outcome.add_done_callback(_observe)
            if self._started:
                await asyncio.wait([outcome], timeout=WIND_DOWN_S)
            raise


def _observe(outcome: asyncio.Future[Any]) -> None:
    """Mark the abandoned outcome's error (the run's cancellation, as a rule) as seen.

    Unseen, asyncio logs it with a traceback when the future is collected, from whichever
    thread collects it; on Python 3.11 that traceback's ``ast.parse`` racing another
    thread's can raise ``SystemError: AST constructor recursion depth mismatch`` there.
    """
    if not outcome.cancelled():
        outcome.exception()
