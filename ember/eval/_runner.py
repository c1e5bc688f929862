"""One evaluation run: stream items, run systems, score, journal, summarise.

Design, and why:
- *Streaming.* Items are pulled from the dataset by a fixed pool of ``concurrency``
  workers; at most that many items are in memory, and records go straight to the
  journal, so run size does not bound memory.
- *One budget.* Workers bound items in flight, not calls: every model call goes through
  the shared :class:`ModelService`, whose I/O loop enforces the per-model concurrency and
  RPM/TPM limits for the whole process. Nested ensembles cannot multiply it.
- *Nothing lost.* Each finished item is committed before it is counted; a resumed run
  skips committed items and retries errored ones. Results are computed from the journal
  in dataset order, so an interrupted-and-resumed run ends with the same numbers.
- *Budget.* With a :class:`CostBudget`, no item starts once it is spent; the results say so,
  with the spend the journal holds once the items in flight have finished.
- *One item, one outcome.* Whatever a system or evaluator raises on one item (a provider
  error, a prompt its SDK cannot encode, a bug) is that item's error: journaled (redacted),
  counted, retried on resume. Only cancellation and a spent budget stop the run.
- *Identity.* A journal on disk is bound to the run's identity: a fingerprint of the
  dataset's content (one streamed pass before any call), the systems' specs, the evaluators
  and the prompt. Resuming with another identity is refused; see :class:`Journal`.
- *Exact cost.* Each item runs in a usage scope that every model call below it reports
  to, whatever the system; a failed item keeps the usage of the calls that were answered.
- *Stopping.* Each item also runs in a cancel scope: when the run is cancelled (Ctrl-C,
  another worker's failure), the item's calls are cancelled on the I/O loop, so the
  process stops within a second instead of waiting out slow requests. Items committed
  before that stay in the journal.
- *Sharding.* With ``mesh``, each item runs under :func:`ember.local.use_mesh`, so the
  local model's generations (the micro-batched calls of many items in flight) are split
  over the mesh's batch axis. Sharding moves rows, not arithmetic: greedy answers equal
  the unsharded ones, so the mesh is not part of the run's identity and a run started
  on one device resumes on eight (or the reverse).
- *On the I/O loop.* :func:`run_sync` runs the items on Ember's I/O loop, where every
  model call is made: a model-id system or an operator with native ``aforward`` (the
  built-in ones) awaits its calls there with no thread and no crossing between loops.
  Synchronous code (a sync function, an operator with only ``forward``) runs on a pool of
  worker threads sized to the item concurrency (:meth:`Run.threads`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import json
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ember._runtime import CancelScope, EmberError, UsageScope, on_io_loop, open_scope, redact, use_threads
from ember.data import Dataset, DatasetError, DatasetItem
from ember.eval._budget import CostBudget
from ember.eval._commits import GroupCommit
from ember.eval._evaluator import Evaluator
from ember.eval._hosted import Hosted
from ember.eval._journal import IDENTITY_FORMAT, Journal
from ember.eval._metrics import bootstrap_ci, percentiles
from ember.eval._progress import ProgressDisplay
from ember.eval._record import ItemRecord
from ember.eval._results import EvaluationResults, RecordView
from ember.eval._systems import System, SystemFailure
from ember.models import BudgetExceededError, ProviderError

__all__ = ["Run", "RunOptions", "PromptSpec", "PromptTemplateError", "render_prompt", "template_fields", "dataset_fingerprint"]

PromptSpec = str | Callable[[DatasetItem], str] | None


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run goes, as one value: what :class:`~ember.eval.EvaluationPipeline` and
    :func:`~ember.eval.compare_systems` take as keywords.

    - ``prompt``: how an item becomes text (see :func:`render_prompt`);
    - ``concurrency``: items in flight (model calls are bounded by the models layer);
    - ``journal``: a path (resumable) or a :class:`Journal`; ``None`` keeps it in memory;
    - ``budget``: a :class:`CostBudget` or a number of USD;
    - ``progress``: ``None`` shows a bar on terminals;
    - ``service``: the :class:`~ember.models.ModelService` for systems named by model id;
    - ``mesh``: a ``jax.sharding.Mesh`` with a ``"batch"`` axis, or an int N (the first N
      devices on a 1-D ``"batch"`` mesh; 1 is no mesh): the local model's generations are
      split over it (see :func:`ember.local.use_mesh`). Results do not change.
    - ``backend``: ``"local"`` (this process) or ``"ray"``: windows of items run as Ray tasks
      on the cluster at ``ray_address`` (default ``$RAY_ADDRESS``, else a local instance);
      the journal stays here, model limits become cluster-wide (see :mod:`ember.eval._ray_backend`).
    """

    prompt: PromptSpec = None
    concurrency: int = 32
    journal: Journal | str | Path | None = None
    budget: CostBudget | float | None = None
    progress: bool | None = None
    service: Any = None
    mesh: Any = None
    backend: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.backend == "ray" and self.mesh is not None:
            raise ValueError("mesh applies to the local backend only")
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")
        mesh = self.mesh  # checked without importing jax: a run without a mesh never loads it
        if isinstance(mesh, bool) or (isinstance(mesh, int) and mesh < 1):
            raise ValueError(f"mesh must be a jax.sharding.Mesh or a device count >= 1, got {mesh!r}")
        if mesh is not None and not isinstance(mesh, int) and "batch" not in getattr(mesh, "axis_names", ()):
            raise ValueError(f"mesh must be a jax.sharding.Mesh with a 'batch' axis or a device count, got {mesh!r}")
        if isinstance(self.prompt, str):
            template_fields(self.prompt)  # a malformed template fails here, before any call


class PromptTemplateError(EmberError, ValueError):
    """A prompt template that is malformed, or names a field an item does not have."""


_TEMPLATE_NAMES = ("prompt", "query", "choices")


def template_fields(template: str) -> list[str]:
    """The placeholder names of a prompt template, which may hold only plain ``{name}`` placeholders.

    >>> template_fields("Q: {query} {choices}")
    ['query', 'choices']
    >>> template_fields("{query.upper}")
    Traceback (most recent call last):
    ...
    ember.eval._runner.PromptTemplateError: prompt template '{query.upper}': {query.upper} is not a plain {name} placeholder (no attribute, index, conversion or format spec); write a literal brace as {{ or }}
    """
    hint = "write a literal brace as {{ or }}"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:  # "Single '}' encountered", "expected '}' before end of string"
        raise PromptTemplateError(f"prompt template {template!r}: {error}; {hint}") from None
    names: list[str] = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise PromptTemplateError(
                f"prompt template {template!r}: {shown} is not a plain {{name}} placeholder "
                f"(no attribute, index, conversion or format spec); {hint}"
            )
        names.append(field)
    return names


def render_prompt(item: DatasetItem, prompt: PromptSpec) -> str:
    """The text sent for ``item``: ``item.prompt`` by default, else a template or a function.

    Templates may use ``{prompt}`` (query and lettered choices), ``{query}``, ``{choices}``
    and any metadata key, as plain ``{name}`` placeholders only (see :func:`template_fields`).
    """
    if prompt is None:
        return item.prompt
    if callable(prompt):
        return prompt(item)
    names = template_fields(prompt)
    choices = "\n".join(f"{label}. {text}" for label, text in item.choices.items())
    values = {**item.metadata, "prompt": item.prompt, "query": item.query, "choices": choices}
    missing = [name for name in names if name not in values]
    if missing:
        known = ", ".join(f"{{{k}}}" for k in [*_TEMPLATE_NAMES, *(k for k in item.metadata if isinstance(k, str))])
        raise PromptTemplateError(
            f"prompt template names {', '.join(f'{{{m}}}' for m in missing)}, which item {item.id!r} does not have; "
            f"it can use {known}"
        )
    return prompt.format_map(values)


def _plain(value: Any) -> Any:
    """A JSON-able stand-in for a metadata value, stable across processes (never an address)."""
    if hasattr(value, "tolist"):  # numpy values from parquet files
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(map(repr, value))
    if type(value).__repr__ is object.__repr__:
        return f"<{type(value).__qualname__}>"
    return repr(value)


def _canonical(item: DatasetItem) -> bytes:
    fields = [item.id, item.query, item.answer, [[k, v] for k, v in item.choices.items()]]
    try:
        metadata = json.dumps(dict(item.metadata), sort_keys=True, default=_plain)
    except TypeError:  # keys of mixed types cannot be sorted
        metadata = json.dumps([[repr(k), v] for k, v in item.metadata.items()], default=_plain)
    return json.dumps([*fields, metadata], default=_plain).encode("ascii") + b"\n"  # ASCII: lone surrogates escaped


def dataset_fingerprint(items: Iterable[DatasetItem], *, name: str = "dataset") -> tuple[int, str]:
    """How many items, and the sha256 of their ids, queries, answers, choices and metadata.

    One streamed pass: memory does not grow with the dataset beyond a set of ids (duplicate
    ids are refused here, before any call, as they would be during the run).

    >>> dataset_fingerprint([DatasetItem("1", "What is 1 + 1?", "2")])[0]
    1
    """
    digest, seen, count = hashlib.sha256(), set(), 0
    for item in items:
        if item.id in seen:
            raise DatasetError(f"{name}: item id {item.id!r} occurs twice; ids must be unique")
        seen.add(item.id)
        digest.update(_canonical(item))
        count += 1
    return count, digest.hexdigest()


def _error_text(error: BaseException) -> str:
    """One item's error as journaled: typed, redacted, bounded."""
    text = str(error) if isinstance(error, EmberError) else f"{type(error).__name__}: {error}"
    text = redact(text)
    return text if len(text) <= 4000 else text[:3999] + "…"


def _is_cancellation(error: BaseException, scope: CancelScope) -> bool:
    """Whether ``error`` means the run (not this item) is being cancelled."""
    if not isinstance(error, concurrent.futures.CancelledError):
        return False
    task = asyncio.current_task()
    return scope.cancelled or (task is not None and task.cancelling() > 0)


def _unique_names(evaluators: Sequence[Evaluator]) -> list[str]:
    """One metric name per evaluator, never colliding with each other or with the summary series.

    ``accuracy`` (the share the first evaluator judged correct) and ``error_rate`` are the
    results' own series: the first evaluator may be named ``accuracy`` (its series *is*
    the accuracy series, counted once); any later one, or one named ``error_rate``, is renamed.
    """
    names: list[str] = []
    for position, evaluator in enumerate(evaluators):
        reserved = {"error_rate"} | ({"accuracy"} if position else set())
        name, k = evaluator.name, 2
        while name in names or name in reserved:
            name, k = f"{evaluator.name}_{k}", k + 1
        names.append(name)
    return names


class Run:
    """One pass over a dataset for one or more systems, sharing items and the journal.

    ``fingerprint`` is the dataset's ``(count, sha256)`` when the caller has computed it
    already (the CLI names the journal after it); otherwise :meth:`open` computes it.
    """

    def __init__(
        self,
        dataset: Dataset | Sequence[DatasetItem],
        systems: Mapping[str, System],
        evaluators: Sequence[Evaluator],
        options: RunOptions,
        *,
        fingerprint: tuple[int, str] | None = None,
    ) -> None:
        if not evaluators:
            raise ValueError("at least one evaluator is needed")
        self.dataset = dataset if isinstance(dataset, Dataset) else Dataset.from_items(dataset)
        self.systems, self.evaluators = dict(systems), list(evaluators)
        self.names = _unique_names(self.evaluators)
        self.prompt, self.concurrency = options.prompt, options.concurrency
        journal, budget = options.journal, options.budget
        self.journal = journal if isinstance(journal, Journal) else Journal(journal if journal is not None else ":memory:")
        self.budget = CostBudget(budget) if isinstance(budget, (int, float)) else budget
        self.progress_enabled, self.stats = options.progress, None
        if options.progress is not False:  # the progress bar reads the service's live retry counters
            service = options.service
            if service is None:
                from ember._context import get_app_context

                service = get_app_context().model_service
            self.stats = service.stats
        self.mesh = None
        if options.mesh is not None:  # imports jax: only runs that shard pay for it
            from ember.local import batch_mesh

            self.mesh = batch_mesh(options.mesh)
        self.backend, self.ray_address = options.backend, options.ray_address
        self.stopped: str | None = None
        self._fingerprint = fingerprint
        self._opened = False

    def describe(self, fingerprint: tuple[int, str] | None = None) -> dict[str, Any]:
        """The run's identity, as the journal stores and compares it."""
        prompt = self.prompt if isinstance(self.prompt, str) or self.prompt is None else getattr(self.prompt, "__qualname__", "fn")
        count, sha = fingerprint if fingerprint is not None else (None, None)
        return {
            "format": IDENTITY_FORMAT,
            "dataset": {"name": repr(self.dataset), "items": count, "sha256": sha},
            "systems": {name: system.spec for name, system in self.systems.items()},
            "evaluators": [repr(e) for e in self.evaluators],
            "prompt": prompt,
        }

    def open(self) -> int:
        """Take the journal for this run and check (or record) its identity, before any call.

        A journal on disk gets the dataset's content fingerprint (one streamed pass; an
        in-memory journal is not resumed by another process and skips it). Raises
        :class:`~ember.eval.JournalInUseError` or :class:`~ember.eval.JournalMismatchError`.
        Returns how many ``(system, item)`` pairs are finished already. :meth:`run` calls it.
        """
        if not self._opened:
            fingerprint, self._fingerprint = self._fingerprint, None
            if self.journal.path == ":memory:":
                fingerprint = None  # compared by the dataset's description only
            elif fingerprint is None:
                fingerprint = dataset_fingerprint(self.dataset, name=self.dataset.name or "dataset")
            self.journal.begin(self.describe(fingerprint))
            self._opened = True
        return sum(len(self.journal.finished(name)) for name in self.systems)

    def close(self) -> None:
        """Give the journal back (the lock :meth:`open` took)."""
        if self._opened:
            self._opened = False
            self.journal.release()

    def _units(self, done: Mapping[str, set[str]]) -> Iterator[tuple[int, DatasetItem, str, System]]:
        seen: set[str] = set()
        for position, item in enumerate(self.dataset):
            if item.id in seen:
                raise DatasetError(f"{self.dataset.name or 'dataset'}: item id {item.id!r} occurs twice; ids must be unique")
            seen.add(item.id)
            for name, system in self.systems.items():
                if item.id not in done[name]:
                    yield position, item, name, system

    async def _score(self, position: int, item: DatasetItem, name: str, system: System) -> ItemRecord:
        """One item through one system and the evaluators: a record, whatever goes wrong in it.

        Only a spent budget (:class:`BudgetExceededError`) and cancellation of the run
        propagate; anything else a system or evaluator raises is this item's error.
        """
        started = time.perf_counter()
        used, output, scores, correct, details = UsageScope(), None, {}, {}, {}
        usage = None
        with self._placement(), open_scope() as scope:
            try:
                with used:  # the system's calls; evaluators' usage is added from their results
                    output = await system.arun(render_prompt(item, self.prompt))
                if used.calls or used.failed:  # measured: every call made through Ember
                    usage, calls, attempts = used.usage, used.calls + used.failed, used.attempts
                else:  # no call went through Ember: what the system says it cost
                    usage, calls, attempts = output.usage, output.calls, output.attempts
                for metric, evaluator in zip(self.names, self.evaluators):
                    result = await evaluator.aevaluate(output.text, item)
                    scores[metric], correct[metric] = float(result.score), bool(result.is_correct)
                    if result.metadata:
                        details[metric] = dict(result.metadata)
                    if result.usage is not None:
                        usage = usage + result.usage
            except BudgetExceededError:
                raise
            except Exception as error:
                if _is_cancellation(error, scope):
                    scope.cancel("the evaluation run was cancelled")
                    raise
                # Failed after the service's retries, or could not be sent at all: journal it, retry on resume.
                # Where a call failed, the item's cost is unknown (whether a provider bills failed work, or
                # work it timed out on, Ember cannot see): never a false $0. Where every call was answered
                # (an unusable output, an evaluator's error) it is what those calls cost.
                latency = time.perf_counter() - started
                if usage is None:
                    usage = used.usage
                calls = used.calls + used.failed
                if isinstance(error, (ProviderError, SystemFailure)):
                    calls = calls or 1
                if used.failed or isinstance(error, ProviderError):
                    usage = dataclasses.replace(usage, cost_usd=None)
                attempts = max(used.attempts, getattr(error, "attempts", 0) or 0, calls)
                text = output.text if output is not None else None
                where = "" if output is None else "evaluation failed: "
                return ItemRecord(
                    name, item.id, position, text, {}, {}, {}, latency, usage.cost_usd, usage.input_tokens,
                    usage.output_tokens, calls, attempts, where + _error_text(error),
                )  # fmt: skip
            except BaseException:  # cancelled (Ctrl-C, the caller): stop this item's calls now
                scope.cancel("the evaluation run was cancelled")
                raise
        latency = time.perf_counter() - started
        return ItemRecord(
            name, item.id, position, output.text, scores, correct, details, latency, usage.cost_usd,
            usage.input_tokens, usage.output_tokens, calls, attempts,
        )  # fmt: skip

    def _placement(self) -> contextlib.AbstractContextManager[Any]:
        """Where the item's local generations run: split over :attr:`mesh`, if there is one."""
        if self.mesh is None:
            return contextlib.nullcontext()
        from ember.local import use_mesh

        return use_mesh(self.mesh)

    @contextlib.contextmanager
    def threads(self) -> Iterator[concurrent.futures.Executor]:
        """Worker threads for the items' synchronous code, sized to the items in flight (not the CPUs).

        Started only when used: a run whose systems are all async starts none.
        """
        pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="ember-eval")
        try:
            with use_threads(pool):
                yield pool
        finally:
            pool.shutdown(wait=False)

    async def run(self) -> dict[str, EvaluationResults]:
        started = time.perf_counter()
        self.open()
        try:
            with fewer_collections(), self.threads():
                if self.backend == "ray":  # imports Ray: only runs that ask for it pay for it
                    from ember.eval._ray_backend import run_on_ray

                    worker = RunOptions(prompt=self.prompt, concurrency=self.concurrency, progress=False)
                    return await run_on_ray(self, started, worker)
                return await self._run(started)
        finally:
            self.close()

    async def _run(self, started: float) -> dict[str, EvaluationResults]:
        done = {name: self.journal.finished(name) for name in self.systems}
        self.stopped = None
        budget_stop = False
        spent, unpriced = self.journal.spent()
        if self.budget is not None:
            self.budget.begin(spent)
        units = self._units(done)
        total = len(self.dataset) * len(self.systems)
        display = ProgressDisplay(total, stats=self.stats, budget=self.budget, enabled=self.progress_enabled)
        journal = GroupCommit(self.journal)

        async def worker() -> None:
            nonlocal budget_stop
            while self.stopped is None:
                if self.budget is not None and self.budget.exhausted:
                    budget_stop = True
                    self.stopped = self.budget.describe()
                    return
                unit = next(units, None)
                if unit is None:
                    return
                try:
                    record = await self._score(*unit)
                except BudgetExceededError as error:
                    self.stopped = str(error)
                    return
                await journal.commit(record)
                if self.budget is not None:
                    self.budget.charge(record.cost_usd)
                display.advance(record)

        with display:
            display.skip(sum(len(ids) for ids in done.values()), spent_usd=spent, unpriced=unpriced)
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(self.concurrency):
                        group.create_task(worker())
            except BaseExceptionGroup as failed:  # surface the error itself, not a group of one
                raise failed.exceptions[0] from None
        if budget_stop and self.budget is not None:  # the items in flight have finished: say what was spent in all
            final, unknown = self.journal.spent()
            self.stopped = self.budget.describe(spent_usd=final, unpriced=unknown)
        wall = time.perf_counter() - started
        return {name: self._summarize(name, wall) for name in self.systems}

    def _summarize(self, system: str, wall: float) -> EvaluationResults:
        """Metrics from the journal, streamed in dataset order: only number arrays are held.

        One entry per record in every series: an evaluator named ``accuracy`` is the
        accuracy series itself (see :func:`_unique_names`), never counted twice.
        """
        scored = [m for m in self.names if m != "accuracy"]
        series: dict[str, list[float]] = {m: [] for m in (*scored, "accuracy", "error_rate")}
        latencies: list[float] = []
        known, unpriced, tokens_in, tokens_out, calls, retries = 0.0, 0, 0, 0, 0, 0
        for r in self.journal.records(system):
            for m in scored:
                series[m].append(r.scores.get(m, 0.0))
            series["accuracy"].append(float(r.correct.get(self.names[0], False)))
            series["error_rate"].append(float(not r.ok))
            if r.ok:
                latencies.append(r.latency_s)
            if r.cost_usd is None:
                unpriced += 1
            else:
                known += r.cost_usd
            tokens_in, tokens_out = tokens_in + r.input_tokens, tokens_out + r.output_tokens
            calls, retries = calls + r.calls, retries + max(0, r.attempts - r.calls)
        intervals = {m: bootstrap_ci(np.array(v)) for m, v in series.items()}
        lat = np.array(latencies)
        return EvaluationResults(
            system=system,
            metrics={m: interval.value for m, interval in intervals.items()},
            intervals=intervals,
            n_items=len(series["error_rate"]),
            n_errors=int(sum(series["error_rate"])),
            cost_usd=None if unpriced else known,
            known_cost_usd=known,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            calls=calls,
            retries=retries,
            latency={**percentiles(lat), "mean": float(lat.mean()) if len(lat) else float("nan")},
            wall_s=wall,
            records=RecordView(self.journal, system),
            stopped=self.stopped,
        )


#: The young-generation threshold of the cyclic GC while a run is in flight (CPython's is 700).
GC_THRESHOLD = 20_000
_gc_lock = threading.Lock()
_gc_runs = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect cyclic garbage less often while a run is in flight; the old thresholds after.

    Hundreds of items in flight allocate futures, tasks and frames at a rate that makes
    CPython's default threshold (700) collect the young generation every few calls, and
    the middle one — which by then holds every in-flight item's objects — every few dozen:
    measured on the ensemble + judge bench (1,000 items, 256 in flight, JAX imported),
    the collector took 0.45 of 1.5 CPU seconds. At 20,000 it takes under 0.1. Garbage
    without cycles is freed at once as ever, so memory barely moves. Process-wide, like
    every GC setting: the first of overlapping runs raises it, the last restores it, unless
    someone else changed it meanwhile (or turned collection off: threshold 0) — theirs stays.
    """
    global _gc_runs, _gc_saved
    with _gc_lock:
        if _gc_runs == 0:
            saved = gc.get_threshold()
            _gc_saved = saved if 0 < saved[0] < GC_THRESHOLD else None
            if _gc_saved is not None:
                gc.set_threshold(GC_THRESHOLD, *saved[1:])
        _gc_runs += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_runs -= 1
            if _gc_runs == 0 and _gc_saved is not None:
                if gc.get_threshold()[0] == GC_THRESHOLD:
                    gc.set_threshold(*_gc_saved)
                _gc_saved = None


def run_sync(run: Run) -> dict[str, EvaluationResults]:
    """Run ``run`` on Ember's I/O loop and wait for its results (from any thread but that loop's).

    An interrupt of the wait (Ctrl-C) cancels the run -- every item's calls -- and waits
    briefly for it to wind down, so the journal is released before the interrupt propagates.
    """
    if on_io_loop():
        raise RuntimeError("run_sync would deadlock on Ember's I/O loop; await run.run() there instead")
    return Hosted(run.run()).result()


