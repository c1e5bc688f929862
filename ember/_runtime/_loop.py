"""Ember's single I/O event loop: where every model call in the process runs.

Why one loop on one daemon thread:
- *One budget.* Concurrency limits and RPM/TPM buckets are plain asyncio primitives on this
  loop, so every caller — sync code, user threads, notebooks, nested operators, the user's
  own event loop — draws on the same budget; nested parallelism cannot multiply it.
- *Native async I/O.* A thousand in-flight calls are a thousand coroutines, not threads.
- *Clients bound to one loop.* SDK async clients must live and die on the loop that uses
  them (one created in a short-lived ``asyncio.run`` logs "Event loop is closed" when
  collected); here they live as long as the process.

Sync callers block on a ``concurrent.futures.Future``; async callers on another loop await
``asyncio.wrap_future`` of it. The hop costs tens of microseconds against milliseconds of
client CPU per SDK call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["io_loop", "submit", "on_io_loop"]

T = TypeVar("T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid: int | None = None


def io_loop() -> asyncio.AbstractEventLoop:
    """The process-wide I/O loop, started on first use (and again after a fork)."""
    global _loop, _thread, _pid
    loop = _loop
    if loop is not None and _pid == os.getpid():
        return loop
    with _lock:
        if _loop is None or _pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="ember-io", daemon=True)
            _thread.start()
            _pid = os.getpid()
        return _loop


def on_io_loop() -> bool:
    """Whether the caller runs on the I/O loop's thread (where blocking would deadlock)."""
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the I/O loop; returns at once."""
    return asyncio.run_coroutine_threadsafe(coro, io_loop())
