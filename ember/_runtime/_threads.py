"""Worker threads for synchronous code that async code awaits, in a copy of the caller's context.

Async callers (an evaluation on the I/O loop, an async operator) sometimes have to run
plain synchronous code: a user's operator with only ``forward``, a sync function under
evaluation. It must not run on the loop (it would stall every call in flight there), so it
runs on a worker thread, in a copy of the caller's context so that its usage and cancel
scopes (see :mod:`ember._runtime._usage`, :mod:`ember._runtime._scope`) reach its model
calls. Which pool: the one :func:`use_threads` chose for the block (an evaluation sizes
one to its item concurrency), else the running loop's default executor.

>>> import asyncio, concurrent.futures
>>> from ember._runtime import to_thread, use_threads
>>> async def main():
...     with use_threads(concurrent.futures.ThreadPoolExecutor(2)):
...         return await to_thread(pow, 2, 10)
>>> asyncio.run(main())
1024
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["to_thread", "use_threads"]

T = TypeVar("T")
_pool: contextvars.ContextVar[concurrent.futures.Executor | None] = contextvars.ContextVar("ember_threads", default=None)


async def to_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Await ``fn(*args, **kwargs)`` run on a worker thread, in a copy of the caller's context."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool.get(), call)


@contextlib.contextmanager
def use_threads(executor: concurrent.futures.Executor) -> Iterator[concurrent.futures.Executor]:
    """Run :func:`to_thread` calls made in this block (and tasks it starts) on ``executor``."""
    token = _pool.set(executor)
    try:
        yield executor
    finally:
        _pool.reset(token)
