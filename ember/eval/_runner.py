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
- *Budget.* With a :class:`CostBudget`, no item starts once it is spent; the results say so.
- *Exact cost.* Each item runs in a usage scope that every model call below it reports
  to, whatever the system; a failed item keeps the usage of the calls that were answered.
- *Stopping.* Each item also runs in a cancel scope: when the run is cancelled (Ctrl-C,
  another worker's failure), the item's calls are cancelled on the I/O loop, so the
  process stops within a second instead of waiting out slow requests. Items committed
  before that stay in the journal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ember._runtime import UsageScope, open_scope
from ember.data import Dataset, DatasetError, DatasetItem
from ember.eval._budget import CostBudget
from ember.eval._evaluator import Evaluator
from ember.eval._journal import Journal
from ember.eval._metrics import bootstrap_ci, percentiles
from ember.eval._progress import ProgressDisplay
from ember.eval._record import ItemRecord
from ember.eval._results import EvaluationResults, RecordView
from ember.eval._systems import System, SystemFailure
from ember.models import BudgetExceededError, ProviderError

__all__ = ["Run", "RunOptions", "PromptSpec", "render_prompt"]

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
    - ``service``: the :class:`~ember.models.ModelService` for systems named by model id.
    """

    prompt: PromptSpec = None
    concurrency: int = 32
    journal: Journal | str | Path | None = None
    budget: CostBudget | float | None = None
    progress: bool | None = None
    service: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")


def render_prompt(item: DatasetItem, prompt: PromptSpec) -> str:
    """The text sent for ``item``: ``item.prompt`` by default, else a template or a function.

    Templates may use ``{prompt}`` (query and lettered choices), ``{query}``, ``{choices}``
    and any metadata key.
    """
    if prompt is None:
        return item.prompt
    if callable(prompt):
        return prompt(item)
    choices = "\n".join(f"{label}. {text}" for label, text in item.choices.items())
    return prompt.format_map({**item.metadata, "prompt": item.prompt, "query": item.query, "choices": choices})


def _unique_names(evaluators: Sequence[Evaluator]) -> list[str]:
    names: list[str] = []
    for evaluator in evaluators:
        name, k = evaluator.name, 2
        while name in names:
            name, k = f"{evaluator.name}_{k}", k + 1
        names.append(name)
    return names


class Run:
    """One pass over a dataset for one or more systems, sharing items and the journal."""

    def __init__(
        self,
        dataset: Dataset | Sequence[DatasetItem],
        systems: Mapping[str, System],
        evaluators: Sequence[Evaluator],
        options: RunOptions,
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
        self.stopped: str | None = None

    def describe(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) or self.prompt is None else getattr(self.prompt, "__qualname__", "fn")
        return {
            "dataset": repr(self.dataset),
            "systems": {name: system.spec for name, system in self.systems.items()},
            "evaluators": [repr(e) for e in self.evaluators],
            "prompt": prompt,
        }

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
        started = time.perf_counter()
        with UsageScope() as used, open_scope() as scope:
            try:
                output = await system.arun(render_prompt(item, self.prompt))
            except BudgetExceededError:
                raise
            except (ProviderError, SystemFailure) as error:  # failed after the service's retries: journal, retry on resume
                latency = time.perf_counter() - started
                usage = used.usage  # the calls that were answered; failed requests are not billed
                return ItemRecord(
                    name, item.id, position, None, {}, {}, {}, latency, usage.cost_usd, usage.input_tokens,
                    usage.output_tokens, used.calls + used.failed or 1, max(used.attempts, getattr(error, "attempts", 1)),
                    str(error),
                )  # fmt: skip
            except BaseException:  # cancelled (Ctrl-C, a failed sibling worker): stop this item's calls now
                scope.cancel("the evaluation run was cancelled")
                raise
        latency = time.perf_counter() - started
        if used.calls or used.failed:  # measured: every call made through Ember
            usage, calls, attempts = used.usage, used.calls + used.failed, used.attempts
        else:  # no call went through Ember: what the system says it cost
            usage, calls, attempts = output.usage, output.calls, output.attempts
        scores, correct, details = {}, {}, {}
        for metric, evaluator in zip(self.names, self.evaluators):
            result = await evaluator.aevaluate(output.text, item)
            scores[metric], correct[metric] = float(result.score), bool(result.is_correct)
            if result.metadata:
                details[metric] = dict(result.metadata)
            if result.usage is not None:
                usage = usage + result.usage
        return ItemRecord(
            name, item.id, position, output.text, scores, correct, details, latency, usage.cost_usd,
            usage.input_tokens, usage.output_tokens, calls, attempts,
        )  # fmt: skip

    async def run(self) -> dict[str, EvaluationResults]:
        started = time.perf_counter()
        self.journal.begin(self.describe())
        done = {name: self.journal.finished(name) for name in self.systems}
        self.stopped = None
        spent, unpriced = self.journal.spent()
        if self.budget is not None:
            self.budget.begin(spent)
        units = self._units(done)
        total = len(self.dataset) * len(self.systems)
        display = ProgressDisplay(total, stats=self.stats, budget=self.budget, enabled=self.progress_enabled)

        async def worker() -> None:
            while self.stopped is None:
                if self.budget is not None and self.budget.exhausted:
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
                self.journal.write(record)
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
        wall = time.perf_counter() - started
        return {name: self._summarize(name, wall) for name in self.systems}

    def _summarize(self, system: str, wall: float) -> EvaluationResults:
        """Metrics from the journal, streamed in dataset order: only number arrays are held."""
        series: dict[str, list[float]] = {m: [] for m in (*self.names, "accuracy", "error_rate")}
        latencies: list[float] = []
        known, unpriced, tokens_in, tokens_out, calls, retries = 0.0, 0, 0, 0, 0, 0
        for r in self.journal.records(system):
            for m in self.names:
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
            n_items=len(series["accuracy"]),
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


def run_sync(run: Run) -> dict[str, EvaluationResults]:
    async def main() -> dict[str, EvaluationResults]:
        # Sync systems run on threads; size the pool to the item concurrency, not the CPU count.
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(run.concurrency))
        return await run.run()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from a running loop (a notebook)
        return pool.submit(asyncio.run, main()).result()


