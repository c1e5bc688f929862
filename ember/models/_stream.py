"""Streamed calls: the iterators :meth:`ModelService.stream` and ``astream`` return.

A stream yields text deltas (``str``) as they arrive and, last, the full
:class:`~ember.models.ModelResponse` (usage and cost included, exactly as
:meth:`~ember.models.ModelService.invoke_model` would return it); the deltas concatenate
to ``response.text``, unless a structured answer failed validation and was repaired by a
second, unstreamed request (``response.repaired``: the deltas were the rejected answer).
After the end, ``stream.response`` holds the response too::

    for item in service.stream("openai:gpt-4o", "Tell me a story"):
        if isinstance(item, str):
            print(item, end="", flush=True)
        else:
            response = item             # ModelResponse: text, usage, cost

The call itself runs on Ember's I/O loop (:mod:`ember._runtime._loop`) as one task that
feeds a queue; a sync consumer pulls from a thread-safe queue, an async consumer on another
event loop from an ``asyncio.Queue`` fed through that loop, and a consumer on the I/O loop
iterates the call directly. Stopping early (``break``, ``close()``/``aclose()``, leaving a
``with`` block, the iterator being garbage collected, Ctrl-C, or the enclosing cancel scope
being cancelled) cancels that task, which closes the HTTP response at once and releases the
concurrency slot the stream held for its whole life.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Callable
from typing import Any

from ember._runtime import _loop
from ember.models._types import ModelResponse

__all__ = ["ModelStream", "AsyncModelStream"]

_DONE = object()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _pump(source: AsyncIterator[str | ModelResponse], put: Callable[[Any], None]) -> None:
    """Run the call on the I/O loop, handing every item (then an end marker) to ``put``."""
    try:
        async for item in source:
            put(item)
    except asyncio.CancelledError:
        raise  # the consumer stopped: nobody is listening
    except BaseException as error:
        put(_Failure(error))
        return
    finally:
        with contextlib.suppress(BaseException):
            await source.aclose()  # type: ignore[attr-defined]
    put(_DONE)


class _Base:
    response: ModelResponse | None = None
    _finished = False

    def _take(self, item: Any) -> str | ModelResponse:
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        if isinstance(item, ModelResponse):
            self.response = item
        return item


class ModelStream(_Base):
    """Sync iterator of one streamed call: ``str`` deltas, then the :class:`ModelResponse`.

    A context manager: leaving the block closes the stream (and its connection).
    """

    def __init__(self, source: AsyncIterator[str | ModelResponse], scope: Any = None) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._future = _loop.submit(_pump(source, self._queue.put))
        if scope is not None:
            scope.attach(self._future)

    def __iter__(self) -> ModelStream:
        return self

    def __next__(self) -> str | ModelResponse:
        if self._finished:
            raise StopIteration
        try:
            item = self._queue.get()
        except BaseException:  # Ctrl-C while waiting: the call must not outlive its caller
            self.close()
            raise
        return self._take(item)

    def close(self) -> None:
        """Stop the stream: cancel the call and close its HTTP connection (no-op once finished)."""
        if not self._finished:
            self._finished = True
            self._future.cancel()

    def __enter__(self) -> ModelStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class AsyncModelStream(_Base):
    """Async twin of :class:`ModelStream`: ``async for item in service.astream(...)``.

    An async context manager; ``await stream.aclose()`` stops it early.
    """

    def __init__(self, source: AsyncIterator[str | ModelResponse], scope: Any = None) -> None:
        self._source = source
        self._scope = scope
        self._queue: asyncio.Queue[Any] | None = None
        self._future: Any = None
        self._direct = False

    def __aiter__(self) -> AsyncModelStream:
        return self

    def _start(self) -> None:
        if _loop.on_io_loop():  # already where the call runs: no crossing at all
            self._direct = True
            return
        caller = asyncio.get_running_loop()
        self._queue = items = asyncio.Queue()
        self._future = _loop.submit(_pump(self._source, lambda item: caller.call_soon_threadsafe(items.put_nowait, item)))
        if self._scope is not None:
            self._scope.attach(self._future)

    async def __anext__(self) -> str | ModelResponse:
        if self._finished:
            raise StopAsyncIteration
        if self._queue is None and not self._direct:
            self._start()
        if self._direct:
            try:
                step = self._source.__anext__()
                # No future to attach: the scope cancels the task awaiting each item instead.
                item = await (step if self._scope is None else self._scope.guard(step))
            except StopAsyncIteration:
                self._finished = True
                raise
            except BaseException:
                self._finished = True
                raise
            if isinstance(item, ModelResponse):
                self.response = item
            return item
        try:
            item = await self._queue.get()  # type: ignore[union-attr]
        except BaseException:  # the consumer was cancelled while waiting
            await self.aclose()
            raise
        try:
            return self._take(item)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop the stream: cancel the call and close its HTTP connection (no-op once finished)."""
        if self._finished:
            return
        self._finished = True
        if self._direct:
            await self._source.aclose()  # type: ignore[attr-defined]
        elif self._future is not None:
            self._future.cancel()

    async def __aenter__(self) -> AsyncModelStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._finished and self._future is not None:
            with contextlib.suppress(Exception):
                self._future.cancel()
