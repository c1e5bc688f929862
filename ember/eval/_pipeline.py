"""The evaluation pipeline: the seed's entry point, and several systems compared in one run.

    results = EvaluationPipeline(dataset=data, evaluators=[MultipleChoiceEvaluator()], model=model).evaluate()
    results.metrics["accuracy"]

Both entry points build one :class:`~ember.eval._runner.Run` (see there for how items
stream, calls share one budget, and the journal makes runs resumable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ember.data import Dataset, DatasetItem
from ember.eval._budget import CostBudget
from ember.eval._evaluator import Evaluator
from ember.eval._journal import Journal
from ember.eval._results import EvaluationResults
from ember.eval._runner import PromptSpec, Run, run_sync
from ember.eval._systems import System, as_system

__all__ = ["EvaluationPipeline", "compare_systems"]


def _make_run(
    dataset: Dataset | Sequence[DatasetItem],
    systems: Mapping[str, System],
    evaluators: Sequence[Evaluator],
    *,
    prompt: PromptSpec,
    concurrency: int,
    journal: Journal | str | Path | None,
    budget: CostBudget | float | None,
    progress: bool | None,
    service: Any,
) -> Run:
    stats = None
    if progress is not False:  # the progress bar reads the service's live retry counters
        if service is None:
            from ember.core.app_context import get_app_context

            service = get_app_context().model_service
        stats = service.stats
    return Run(
        dataset if isinstance(dataset, Dataset) else Dataset.from_items(dataset),
        systems,
        evaluators,
        prompt=prompt,
        concurrency=concurrency,
        journal=journal if isinstance(journal, Journal) else Journal(journal if journal is not None else ":memory:"),
        budget=CostBudget(budget) if isinstance(budget, (int, float)) else budget,
        progress=progress,
        stats=stats,
    )


class EvaluationPipeline:
    """Evaluate one system (``model``: a model id, NON notation, operator or function) on ``dataset``.

    ``journal`` (a path) makes the run resumable: run the same pipeline again after an
    interruption and finished items are not called again. ``budget`` is a
    :class:`CostBudget` or a number of USD. ``progress=None`` shows a bar on terminals.
    """

    def __init__(
        self,
        dataset: Dataset | Sequence[DatasetItem],
        evaluators: Sequence[Evaluator],
        model: Any,
        *,
        name: str | None = None,
        prompt: PromptSpec = None,
        concurrency: int = 32,
        journal: Journal | str | Path | None = None,
        budget: CostBudget | float | None = None,
        progress: bool | None = None,
        service: Any = None,
    ) -> None:
        self.system = as_system(model, name=name, service=service)
        self._run = _make_run(
            dataset, {self.system.name: self.system}, evaluators, prompt=prompt, concurrency=concurrency,
            journal=journal, budget=budget, progress=progress, service=service,
        )  # fmt: skip

    @property
    def dataset(self) -> Dataset:
        return self._run.dataset

    @property
    def journal(self) -> Journal:
        return self._run.journal

    def evaluate(self) -> EvaluationResults:
        return run_sync(self._run)[self.system.name]

    async def aevaluate(self) -> EvaluationResults:
        return (await self._run.run())[self.system.name]


def compare_systems(
    dataset: Dataset | Sequence[DatasetItem],
    systems: Mapping[str, Any] | Sequence[Any],
    evaluators: Sequence[Evaluator],
    *,
    prompt: PromptSpec = None,
    concurrency: int = 32,
    journal: Journal | str | Path | None = None,
    budget: CostBudget | float | None = None,
    progress: bool | None = None,
    service: Any = None,
) -> dict[str, EvaluationResults]:
    """Evaluate several systems on the same items in one run (one stream, one journal, one budget).

    ``systems`` maps a label to a system, or lists systems labelled by their own names.
    """
    if not isinstance(systems, Mapping):
        systems = {s.name: s for s in (as_system(x, service=service) for x in systems)}
    wrapped = {label: as_system(s, name=label, service=service) for label, s in systems.items()}
    run = _make_run(
        dataset, wrapped, evaluators, prompt=prompt, concurrency=concurrency, journal=journal, budget=budget,
        progress=progress, service=service,
    )  # fmt: skip
    return run_sync(run)
