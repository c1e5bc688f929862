"""Cluster-wide model limits: one budget per model and provider across every Ray worker.

A per-process limit times N workers is N times the provider's limit. On a Ray cluster the
concurrency slots and the RPM/TPM buckets therefore live in one named actor
(:data:`ACTOR_NAME`) that hands out permits; every worker's :class:`~ember.models.ModelService`
asks it, through :class:`ClusterLimiter`, instead of its own semaphores.

- *Leases.* A concurrency slot is a lease with a time to live; the process holding it renews
  all its leases every ``ttl / 3`` seconds. A worker killed mid-call stops renewing, and its
  slots come back after at most ``ttl`` seconds, so a dead worker never shrinks the budget.
- *Few round trips.* A lease released while another call in the same worker waits for the
  same slot passes to it directly, a few times in a row, so the actor sees a fraction of
  the calls; then it goes back, so every worker gets its turn.
- *Rates.* RPM/TPM are reservation-style token buckets in the actor: a caller reserves its
  units and is told how long to wait before sending, so the actor never blocks on them.

The driver of a Ray run calls :func:`share_budget` (it creates the actor and returns a
:class:`ClusterBudget`: the driver's limits and retry settings, numbers only), and every
task calls :func:`join_budget` with it before it makes a call: evaluation windows, graph
nodes and ``pmap`` items alike. The single-process path never imports Ray and pays nothing.
Nothing here carries a credential: keys are strings such as ``"model:openai:gpt-4o-mini"``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import itertools
import os
import threading
import time
from typing import Any

from ember._runtime import _loop
from ember.models import _limits

__all__ = ["ACTOR_NAME", "ClusterBudget", "ClusterLimiter", "LimitsActor", "join_budget", "limits_actor", "share_budget"]

#: The name of the permit actor in the Ray job.
ACTOR_NAME = "ember-model-limits"
#: Default lease time to live, seconds (``EMBER_RAY_LEASE_TTL`` overrides it when the actor is created).
DEFAULT_TTL = 10.0
#: How many times in a row a lease may pass from one local call to the next before it goes back to the actor.
HANDOFFS = 8


class LimitsActor:
    """Concurrency leases and token buckets, keyed by limiter name (run as an async Ray actor)."""

    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self.leases: dict[str, dict[str, float]] = collections.defaultdict(dict)  # key -> lease -> expiry
        self.peaks: dict[str, int] = collections.defaultdict(int)
        self.buckets: dict[str, list[float]] = {}  # key -> [level, stamp]
        self.conditions: dict[str, asyncio.Condition] = {}
        self.ids = itertools.count()
        self.granted = 0

    def _expire(self, key: str) -> None:
        now = time.monotonic()
        held = self.leases[key]
        for lease in [lease for lease, expiry in held.items() if expiry < now]:
            del held[lease]

    async def acquire(self, key: str, capacity: int) -> str:
        """A lease on one of ``capacity`` slots of ``key``, waiting for one to be free."""
        condition = self.conditions.setdefault(key, asyncio.Condition())
        async with condition:
            while True:
                self._expire(key)
                if len(self.leases[key]) < capacity:
                    break
                with contextlib.suppress(TimeoutError):  # a lease may expire meanwhile: look again
                    await asyncio.wait_for(condition.wait(), self.ttl / 4)
            lease = f"{key}#{next(self.ids)}"
            self.leases[key][lease] = time.monotonic() + self.ttl
            self.peaks[key] = max(self.peaks[key], len(self.leases[key]))
            self.granted += 1
            return lease

    async def release(self, lease: str) -> None:
        key = lease.rpartition("#")[0]
        if self.leases[key].pop(lease, None) is not None and key in self.conditions:
            async with self.conditions[key]:
                self.conditions[key].notify()

    async def renew(self, leases: list[str]) -> None:
        expiry = time.monotonic() + self.ttl
        for lease in leases:
            held = self.leases[lease.rpartition("#")[0]]
            if lease in held:
                held[lease] = expiry

    async def reserve(self, key: str, rate: float, amount: float) -> float:
        """Take ``amount`` units from ``key``'s bucket; seconds to wait before using them."""
        now = time.monotonic()
        capacity = max(1.0, rate)
        level, stamp = self.buckets.get(key, (capacity, now))
        level = min(capacity, level + (now - stamp) * rate)
        need = min(amount, capacity)
        delay = max(0.0, (need - level) / rate)
        self.buckets[key] = [level - amount, now]
        return delay

    async def adjust(self, key: str, rate: float, delta: float) -> None:
        now = time.monotonic()
        capacity = max(1.0, rate)
        level, stamp = self.buckets.get(key, (capacity, now))
        self.buckets[key] = [min(capacity, level + (now - stamp) * rate) - delta, now]

    async def peak(self, key: str) -> int:
        """The most leases ``key`` ever had out at once (for tests and diagnostics)."""
        return self.peaks[key]

    async def grants(self) -> int:
        """How many leases were granted in all (each one round trip from a worker)."""
        return self.granted

    async def held(self, key: str) -> int:
        self._expire(key)
        return len(self.leases[key])


def limits_actor(ray: Any, ttl: float | None = None) -> Any:
    """The job's permit actor, created on first use (no CPU: it only answers messages)."""
    if ttl is None:
        ttl = float(os.environ.get("EMBER_RAY_LEASE_TTL", DEFAULT_TTL))
    remote = ray.remote(LimitsActor).options(name=ACTOR_NAME, get_if_exists=True, num_cpus=0, max_concurrency=1000)
    return remote.remote(ttl)


class _Client:
    """This process's link to the actor: the leases it holds, renewed on Ember's I/O loop."""

    def __init__(self, actor: Any, ttl: float) -> None:
        self.actor, self.ttl = actor, ttl
        self.held: collections.Counter[str] = collections.Counter()
        self._beating = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._beating:
                return
            self._beating = True
        _loop.submit(self._heartbeat(), context=contextvars.Context())  # no item's scope owns it

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if self.held:
                self.actor.renew.remote(list(self.held))


class _ClusterSlots:
    """A semaphore-like view of ``capacity`` cluster-wide slots (``async with``, ``acquire``/``release``).

    Each local waiter has one request at the actor outstanding. A released lease goes straight
    to a local waiter, if there is one, up to :data:`HANDOFFS` times; then (or when no one here
    waits) it goes back to the actor, whose waiters, from any worker, are served in turn. So a
    busy worker asks the actor about once per ``HANDOFFS`` calls, and no worker starves.
    Runs on Ember's I/O loop, like the rest of the call path.
    """

    def __init__(self, client: _Client, key: str, capacity: int) -> None:
        self.client, self.key, self.capacity = client, key, capacity
        self.waiters: collections.deque[asyncio.Future[str]] = collections.deque()
        self.asking = 0  # requests at the actor not answered yet
        self.in_use: list[str] = []
        self.uses: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(self) -> bool:
        self.client.start()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        if self.asking < len(self.waiters):
            self.asking += 1
            task = asyncio.ensure_future(self._ask())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            lease = await future
        except BaseException:
            if future in self.waiters:
                self.waiters.remove(future)
            elif future.done() and not future.cancelled() and future.exception() is None:
                self._give_back(future.result())  # served just as it was cancelled
            raise
        self.in_use.append(lease)
        return True

    async def _ask(self) -> None:
        try:
            lease = await self.client.actor.acquire.remote(self.key, self.capacity)
        except Exception as error:  # the actor is gone: the waiter hears it
            self.asking -= 1
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
                    return
            return
        self.asking -= 1
        self.uses[lease] = 0
        self.client.held[lease] += 1
        self._hand(lease)

    def _hand(self, lease: str) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(lease)
                return
        self._give_back(lease)

    def _give_back(self, lease: str) -> None:
        self.uses.pop(lease, None)
        self.client.held.pop(lease, None)
        self.client.actor.release.remote(lease)

    def release(self) -> None:
        lease = self.in_use.pop()
        self.uses[lease] = self.uses.get(lease, 0) + 1
        if self.waiters and self.uses[lease] < HANDOFFS:
            self._hand(lease)
        else:
            self._give_back(lease)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class ClusterLimiter:
    """A :class:`~ember.models._limits.ModelLimiter` whose budget is the whole cluster's."""

    def __init__(self, client: _Client, key: str, max_concurrency: int | None, rpm: float | None = None,
                 tpm: float | None = None) -> None:  # fmt: skip
        self.client, self.key = client, key
        self.max_concurrency, self.rpm, self.tpm = max_concurrency, rpm, tpm
        self.slots = _ClusterSlots(client, key, max_concurrency) if max_concurrency else None

    async def admit(self, estimated_tokens: int) -> None:
        for suffix, per_minute, amount in ((":rpm", self.rpm, 1), (":tpm", self.tpm, estimated_tokens)):
            if per_minute:
                delay = await self.client.actor.reserve.remote(self.key + suffix, per_minute / 60.0, amount)
                if delay > 0:
                    await asyncio.sleep(delay)

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tpm:
            self.client.actor.adjust.remote(self.key + ":tpm", self.tpm / 60.0, actual_tokens - estimated_tokens)


def install(actor: Any, ttl: float) -> None:
    """Make every limiter this process builds from now on a cluster-wide one (idempotent)."""
    client = _Client(actor, ttl)
    _limits.install_factory(lambda key, *limits: ClusterLimiter(client, key, *limits))


# -- one budget for a run: the driver shares it, every task joins it ------------------------
_LIMIT_FIELDS = ("max_concurrency", "rpm", "tpm", "timeout")
_REGISTRY_FIELDS = ("default_timeout", "max_retries", "backoff_base", "backoff_max", "default_max_concurrency")


@dataclasses.dataclass(frozen=True)
class ClusterBudget:
    """What a task needs to join the cluster-wide budget: numbers only, never a key or URL."""

    #: The driver's ``model_registry`` limits and retry settings. Every limit field of every
    #: provider is listed, ``None`` included, so a limit the driver dropped is dropped in a
    #: worker that served an earlier run too.
    limits: dict[str, Any]
    ttl: float


#: The driver's handle on the job's permit actor (a named actor lives while a handle does).
_driver: dict[str, Any] = {}
#: This worker process: whether it uses the actor, and the limits it last adopted.
_worker: dict[str, Any] = {}


def share_budget(ray: Any) -> ClusterBudget:
    """Driver side: the job's permit actor (created once per job) and the budget to send to tasks."""
    from ember.config import get_config_manager

    ttl = float(os.environ.get("EMBER_RAY_LEASE_TTL", DEFAULT_TTL))
    job = ray.get_runtime_context().get_job_id()
    if _driver.get("job") != job:
        _driver.update(job=job, actor=limits_actor(ray, ttl))
    section = get_config_manager().get_config("model_registry")
    providers = {name: {f: getattr(p, f) for f in _LIMIT_FIELDS} for name, p in section.providers.items()}
    return ClusterBudget({**{f: getattr(section, f) for f in _REGISTRY_FIELDS}, "providers": providers}, ttl)


def join_budget(budget: ClusterBudget) -> None:
    """Worker side (in a task, before any call): this process's limiters become cluster-wide
    ones, with the driver's limits. Idempotent; cheap after the first call."""
    import ray

    from ember.config import get_config_manager

    if "installed" not in _worker:
        install(limits_actor(ray, budget.ttl), budget.ttl)
        _worker["installed"] = True
    if _worker.get("limits") != budget.limits:
        get_config_manager().update_config("model_registry", budget.limits)
        _worker["limits"] = budget.limits
