"""Per-call timeouts that share timers: :class:`Deadline`, a cheaper ``asyncio.timeout``.

``asyncio.timeout`` schedules (and on success cancels) one timer per call and runs an async
context manager around it, about 3.5 us of CPU per call on a 2-core machine: the largest
single cost on the service's call path. Here deadlines are rounded *up* to the next
multiple of :data:`RESOLUTION` and share that slot's one timer, which stays scheduled
until it fires (so at most ``timeout / RESOLUTION`` timers per loop, whatever the call
rate), and entering and leaving is plain synchronous bookkeeping (a set add and discard).
The price: a call can time out up to :data:`RESOLUTION` seconds after its deadline, never
before it.

Semantics otherwise follow ``asyncio.timeout``: when the deadline passes, the task is
cancelled and the block raises :class:`TimeoutError` (chained to the ``CancelledError``);
a cancellation from anyone else, even at the same moment, stays a ``CancelledError``.
Everything runs on one event loop's thread, so a slot's timer and a block's exit never race.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Any

__all__ = ["Deadline", "RESOLUTION"]

#: Seconds: how late, at most, a deadline may fire, and how far apart two slots' timers are.
RESOLUTION = 0.01


class _Slots:
    """One event loop's slots, by rounded deadline."""

    __slots__ = ("slots",)

    def __init__(self) -> None:
        #: The blocks whose deadline rounds to one instant; one timer expires them all.
        self.slots: dict[int, set[Deadline]] = {}

    def add(self, loop: asyncio.AbstractEventLoop, block: Deadline, deadline: float) -> int:
        index = math.ceil(deadline / RESOLUTION)
        slot = self.slots.get(index)
        if slot is None:
            slot = self.slots[index] = set()
            loop.call_at(index * RESOLUTION, self._expire, index)
        slot.add(block)
        return index

    def remove(self, block: Deadline, index: int) -> None:
        slot = self.slots.get(index)
        if slot is not None:  # an emptied slot keeps its timer: later calls may land in it
            slot.discard(block)

    def _expire(self, index: int) -> None:
        for block in self.slots.pop(index, ()):
            block.expired = True
            block.task.cancel()


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slots] = weakref.WeakKeyDictionary()


class Deadline:
    """``with Deadline(seconds): await ...`` in a task: :class:`TimeoutError` once ``seconds`` pass.

    A synchronous context manager (entering and leaving never wait), for use inside a
    coroutine running on its loop. ``None`` or an infinite ``seconds`` (a config's
    ``timeout: .inf``) never expires, as with ``asyncio.timeout``.
    """

    __slots__ = ("seconds", "task", "expired", "_cancelling", "_slots", "_index")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.expired = False
        self._slots: _Slots | None = None

    def __enter__(self) -> Deadline:
        if self.seconds is None or self.seconds == math.inf:
            return self
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("Deadline must be entered inside a task")
        slots = _by_loop.get(loop)
        if slots is None:
            slots = _by_loop[loop] = _Slots()
        self.task, self._slots, self._cancelling = task, slots, task.cancelling()
        self._index = slots.add(loop, self, loop.time() + self.seconds)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.expired:
            if self._slots is not None:
                self._slots.remove(self, self._index)
        elif self.task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc  # no other cancellation is pending: this one is ours
