"""Client-side limits shared by every caller of a model: concurrency, RPM and TPM.

All primitives live on Ember's I/O loop (:mod:`ember._runtime._loop`), so one
:class:`ModelLimiter` per model id is the whole process's budget for that model. A
provider's configured limits (``model_registry.providers.<name>.max_concurrency``, ``rpm``,
``tpm``) are one more limiter, shared by all the provider's model ids: a call takes a slot
(and rate budget) from its model's limiter and from its provider's.

Rate limits are token buckets refilled continuously at ``rate`` per second with a small
capacity (one second's worth). Over any window of ``W`` seconds at most
``capacity + rate * W`` units start — e.g. with ``rpm=600``, 10 requests in any second and
610 in any minute. Pacing smoothly, rather than letting a minute's quota out in one burst,
matches how providers actually enforce limits (at sub-minute granularity). A request
larger than the capacity (a long prompt under a small TPM) waits for a full bucket and
then goes into debt, so it is delayed, never deadlocked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["TokenBucket", "ModelLimiter", "make_limiter", "install_factory"]


class TokenBucket:
    """An asyncio token bucket; waiters are served in arrival order."""

    def __init__(self, rate_per_s: float, capacity: float | None = None) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate must be positive, got {rate_per_s}")
        self.rate = rate_per_s
        self.capacity = max(1.0, capacity if capacity is not None else rate_per_s)
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._turn = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._turn:  # FIFO: a big request is not starved by small ones
            need = min(amount, self.capacity)
            self._refill()
            while self._level < need:
                await asyncio.sleep((need - self._level) / self.rate)
                self._refill()
            self._level -= amount

    def adjust(self, delta: float) -> None:
        """Charge (positive) or refund (negative) units after the fact, e.g. true token counts."""
        self._refill()
        self._level = min(self.capacity, self._level - delta)


class ModelLimiter:
    """Concurrency slots plus optional RPM/TPM buckets for one model, or one provider.

    A provider's limiter is one budget shared by all its model ids; ``max_concurrency=None``
    means no slots (the provider sets only rate limits, or none).
    """

    def __init__(self, max_concurrency: int | None, rpm: float | None = None, tpm: float | None = None) -> None:
        self.max_concurrency, self.rpm, self.tpm = max_concurrency, rpm, tpm
        self.slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self.requests = TokenBucket(rpm / 60.0) if rpm else None
        self.tokens = TokenBucket(tpm / 60.0) if tpm else None

    async def admit(self, estimated_tokens: int) -> None:
        """Wait for rate budget (call before taking a slot, so waiting holds no slot)."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            await self.tokens.acquire(estimated_tokens)

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the TPM bucket once the real token count is known."""
        if self.tokens is not None:
            self.tokens.adjust(actual_tokens - estimated_tokens)


#: What builds this process's limiters; ``None`` is :class:`ModelLimiter`. A Ray worker of the
#: evaluation backend installs a cluster-wide one (:mod:`ember.models._cluster_limits`).
_factory: Any = None


def make_limiter(key: str, max_concurrency: int | None, rpm: float | None = None, tpm: float | None = None) -> Any:
    """The limiter for ``key`` (``"model:<id>"`` or ``"provider:<name>"``): this process's own,
    unless a cluster-wide factory is installed. Called once per limiter, never per call."""
    if _factory is None:
        return ModelLimiter(max_concurrency, rpm, tpm)
    return _factory(key, max_concurrency, rpm, tpm)


def install_factory(factory: Any) -> None:
    """Build every later limiter with ``factory(key, max_concurrency, rpm, tpm)`` (``None``: local)."""
    global _factory
    _factory = factory
