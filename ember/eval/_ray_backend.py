"""Evaluation on a Ray cluster: the driver keeps the journal, workers run windows of items.

Design, and why:
- *One source of truth.* The driver opens the journal, decides what is left (a resumed run
  skips what the journal holds, whichever workers ran it), sends windows of
  :data:`WINDOW` items to Ray tasks, and commits the records they return. Workers never
  touch the journal.
- *Same code.* A task scores its items with :meth:`Run._score` (the local path's code) in
  the worker process, many items at once on that process's I/O loop.
- *Nothing lost, nothing paid twice.* Tasks are retried when a worker dies
  (``max_retries``). Each finished item is written to a cluster-side ledger (an actor)
  right after it completes, and a task first takes from the ledger whatever a previous
  attempt finished: a request that completed is not sent again. The driver also commits
  each ``(system, item)`` once, whatever attempt returned it.
- *One budget per provider.* Workers' model limits are cluster-wide
  (:mod:`ember.models._cluster_limits`), with the driver's configured limits (numbers only).
- *No key in sight.* Task arguments hold the systems, evaluators, prompt and limits, never a
  credential: workers read API keys from their own environment (see
  :mod:`ember._runtime._ray`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import os
import time
import uuid
from typing import Any

from ember._runtime import connect_ray
from ember.eval._hosted import Hosted
from ember.eval._progress import ProgressDisplay
from ember.eval._record import ItemRecord
from ember.models import BudgetExceededError, ClusterBudget, join_budget, share_budget

__all__ = ["LEDGER_NAME", "WINDOW", "run_on_ray", "worker_pids"]

#: Items per Ray task: large enough that scheduling costs little per item.
WINDOW = 32
#: The ledger actor's name in the Ray job.
LEDGER_NAME = "ember-eval-ledger"


class Ledger:
    """Finished records by ``(run, system, item)``, kept while a run lasts; and the worker pids seen."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str, str], ItemRecord] = {}
        self.pids: set[int] = set()

    def take(self, run: str, keys: list[tuple[str, str]], pid: int) -> dict[tuple[str, str], ItemRecord]:
        self.pids.add(pid)
        return {key: self.records[(run, *key)] for key in keys if (run, *key) in self.records}

    def put(self, run: str, record: ItemRecord) -> None:
        self.records[(run, record.system, record.item_id)] = record

    def forget(self, run: str, keys: list[tuple[str, str]]) -> None:
        """The driver has these records: no attempt of their task will run again."""
        for key in keys:
            self.records.pop((run, *key), None)

    def drop(self, run: str) -> None:
        for key in [key for key in self.records if key[0] == run]:
            del self.records[key]

    def workers(self) -> list[int]:
        return sorted(self.pids)


#: The driver's handles on the job's actors: a named actor lives while a handle does.
_held: dict[str, Any] = {}


def _ledger(ray: Any) -> Any:
    return ray.remote(Ledger).options(name=LEDGER_NAME, get_if_exists=True, num_cpus=0).remote()


def worker_pids() -> list[int]:
    """The pids of the processes that have run evaluation windows in this Ray job."""
    ray = connect_ray()
    return ray.get(ray.get_actor(LEDGER_NAME).workers.remote())


def _portable(system: Any) -> Any:
    """``system`` without the driver's model service (its workers use their own)."""
    if getattr(system, "_service", None) is not None:
        system = copy.copy(system)
        system._service = None
    return system


@dataclasses.dataclass(frozen=True)
class _Payload:
    """What every task of one run shares, sent once through the object store."""

    run_type: type
    systems: dict[str, Any]
    evaluators: list[Any]
    options: Any  # the worker's RunOptions: prompt and concurrency, no journal, no progress
    budget: ClusterBudget


# -- worker side ----------------------------------------------------------------------------
_state: dict[str, Any] = {}


def _prepare(run_key: str, payload: _Payload) -> Any:
    """This worker process, set up once per run: the cluster-wide budget, and a Run."""
    if _state.get("run_key") == run_key:
        return _state["run"]
    join_budget(payload.budget)
    run = payload.run_type([], payload.systems, payload.evaluators, payload.options)
    _state.update(run_key=run_key, run=run)
    return run


async def _window(run: Any, run_key: str, window: list[tuple[int, Any, str]]) -> list[ItemRecord]:
    import ray

    ledger = ray.get_actor(LEDGER_NAME)
    known = await ledger.take.remote(run_key, [(name, item.id) for _, item, name in window], os.getpid())
    gate = asyncio.Semaphore(run.concurrency)

    async def one(position: int, item: Any, name: str) -> ItemRecord:
        record = known.get((name, item.id))
        if record is None:
            async with gate:
                record = await run._score(position, item, name, run.systems[name])
            await ledger.put.remote(run_key, record)  # before anything else: a retry must not call it again
        return record

    with run.threads():
        return list(await asyncio.gather(*(one(*unit) for unit in window)))


def _evaluate_window(run_key: str, payload: _Payload, window: list[tuple[int, Any, str]]) -> list[ItemRecord]:
    """One Ray task: score ``window`` in this worker, return its records (the driver commits them)."""
    run = _prepare(run_key, payload)
    return Hosted(_window(run, run_key, window)).result()  # on the I/O loop: the items' calls cross no loop


# -- driver side ----------------------------------------------------------------------------
async def run_on_ray(run: Any, started: float, worker_options: Any) -> dict[str, Any]:
    """Run ``run`` (an opened :class:`~ember.eval._runner.Run`) on Ray; its results, from the journal."""
    ray = connect_ray(run.ray_address)
    job = ray.get_runtime_context().get_job_id()
    budget = share_budget(ray)
    if _held.get("job") != job:  # create once per job; the creating handle owns the actor's life
        _held.update(job=job, ledger=_ledger(ray))
    ledger = _held["ledger"]
    run_key = uuid.uuid4().hex
    done = {name: run.journal.finished(name) for name in run.systems}
    run.stopped, budget_stop = None, False
    spent, unpriced = run.journal.spent()
    if run.budget is not None:
        run.budget.begin(spent)
    units = run._units(done)
    payload = ray.put(_Payload(type(run), {n: _portable(s) for n, s in run.systems.items()}, run.evaluators,
                               worker_options, budget))  # fmt: skip
    task = ray.remote(_evaluate_window).options(max_retries=5, retry_exceptions=False, num_cpus=1)
    width = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: dict[asyncio.Future[Any], Any] = {}
    committed: set[tuple[str, str]] = set()
    total = len(run.dataset) * len(run.systems)
    display = ProgressDisplay(total, stats=None, budget=run.budget, enabled=run.progress_enabled)

    def submit() -> bool:
        window = [(position, item, name) for position, item, name, _ in itertools.islice(units, WINDOW)]
        if not window:
            return False
        ref = task.remote(run_key, payload, window)
        pending[asyncio.wrap_future(ref.future())] = ref
        return True

    with display:
        display.skip(sum(len(ids) for ids in done.values()), spent_usd=spent, unpriced=unpriced)
        try:
            while True:
                while len(pending) < width and run.stopped is None:
                    if run.budget is not None and run.budget.exhausted:
                        budget_stop, run.stopped = True, run.budget.describe()
                        break
                    if not submit():
                        break
                if not pending:
                    break
                finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in finished:
                    del pending[future]
                    try:
                        records = future.result()
                    except BudgetExceededError as error:
                        run.stopped = str(error)
                        continue
                    ledger.forget.remote(run_key, [(r.system, r.item_id) for r in records])  # bounded memory
                    for record in records:
                        key = (record.system, record.item_id)
                        if key in committed:  # returned by two attempts: committed once
                            continue
                        committed.add(key)
                        run.journal.write(record)
                        if run.budget is not None:
                            run.budget.charge(record.cost_usd)
                        display.advance(record)
        finally:
            for future, ref in pending.items():
                future.cancel()
                ray.cancel(ref)
            ledger.drop.remote(run_key)
    if budget_stop and run.budget is not None:
        final, unknown = run.journal.spent()
        run.stopped = run.budget.describe(spent_usd=final, unpriced=unknown)
    wall = time.perf_counter() - started
    return {name: run._summarize(name, wall) for name in run.systems}
