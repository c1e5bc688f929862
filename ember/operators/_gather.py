"""Structured fan-out for async operators: all at once, and a failure cancels the rest.

The async twin of what :class:`~ember._runtime.TaskGroup` does for synchronous operators:
the coroutines run together in an :class:`asyncio.TaskGroup`, so when one fails its
siblings are cancelled (on the I/O loop that closes their HTTP requests) and the failure
itself is raised -- not an ``ExceptionGroup`` of one, so callers see the same typed error
as from the synchronous path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

__all__ = ["gather"]

T = TypeVar("T")


async def gather(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of ``coroutines``, in order, all awaited at once (one alone is awaited inline)."""
    pending = list(coroutines)
    if len(pending) == 1:
        return [await pending[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in pending]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]

