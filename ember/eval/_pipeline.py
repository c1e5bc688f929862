"""The evaluation pipeline: the seed's entry point, and several systems compared in one run.

    results = EvaluationPipeline(dataset=data, evaluators=[MultipleChoiceEvaluator()], model=model).evaluate()
    results.metrics["accuracy"]

Both entry points build one :class:`~ember.eval._runner.Run` from one
:class:`~ember.eval.RunOptions` (see there for how items stream, calls share one budget,
and the journal makes runs resumable). Their keyword options are that value's fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ember.data import Dataset, DatasetItem
from ember.eval._evaluator import Evaluator
from ember.eval._hosted import Hosted
from ember.eval._journal import Journal
from ember.eval._resolve import as_system
from ember.eval._results import EvaluationResults
from ember.eval._runner import Run, RunOptions, run_sync

__all__ = ["EvaluationPipeline", "compare_systems"]


def _options(options: RunOptions | None, overrides: dict[str, Any]) -> RunOptions:
    """``options`` with keyword ``overrides``; an unknown keyword is a ``TypeError`` naming it."""
    return dataclasses.replace(options or RunOptions(), **overrides)


class EvaluationPipeline:
    """Evaluate one system (``model``: a model id, NON notation, operator or function) on ``dataset``.

    Keywords are :class:`RunOptions` fields (``prompt``, ``concurrency``, ``journal``,
    ``budget``, ``progress``, ``service``, ``mesh``, ``backend``, ``ray_address``), or pass
    ``options=RunOptions(...)``. ``backend="ray"`` spreads windows of items over a Ray
    cluster (``ray_address``, else ``$RAY_ADDRESS``, else a local instance); the journal, and
    so resume, stays in this process, and model limits hold for the whole cluster.
    ``mesh`` (a ``jax.sharding.Mesh`` with a ``"batch"`` axis, or a device count) splits the
    local model's generations over devices; answers, journal and resume are unchanged.
    ``journal`` (a path) makes the run resumable: run the same pipeline again after an
    interruption and finished items are not called again. The journal is bound to the
    run's identity (the dataset's content, the systems, evaluators and prompt): another
    identity raises :class:`~ember.eval.JournalMismatchError` naming what changed, and a
    journal another run is using raises :class:`~ember.eval.JournalInUseError`.
    """

    def __init__(
        self,
        dataset: Dataset | Sequence[DatasetItem],
        evaluators: Sequence[Evaluator],
        model: Any,
        *,
        name: str | None = None,
        options: RunOptions | None = None,
        **overrides: Any,
    ) -> None:
        options = _options(options, overrides)
        self.system = as_system(model, name=name, service=options.service)
        self._run = Run(dataset, {self.system.name: self.system}, evaluators, options)

    @property
    def dataset(self) -> Dataset:
        return self._run.dataset

    @property
    def journal(self) -> Journal:
        return self._run.journal

    def evaluate(self) -> EvaluationResults:
        return run_sync(self._run)[self.system.name]

    async def aevaluate(self) -> EvaluationResults:
        """:meth:`evaluate`, awaitable from any event loop: the items run on Ember's I/O loop."""
        return (await Hosted(self._run.run()).wait())[self.system.name]


def compare_systems(
    dataset: Dataset | Sequence[DatasetItem],
    systems: Mapping[str, Any] | Sequence[Any],
    evaluators: Sequence[Evaluator],
    *,
    options: RunOptions | None = None,
    **overrides: Any,
) -> dict[str, EvaluationResults]:
    """Evaluate several systems on the same items in one run (one stream, one journal, one budget).

    ``systems`` maps a label to a system, or lists systems labelled by their own names.
    Keywords are :class:`RunOptions` fields, as for :class:`EvaluationPipeline`.
    """
    options = _options(options, overrides)
    if not isinstance(systems, Mapping):
        systems = {s.name: s for s in (as_system(x, service=options.service) for x in systems)}
    wrapped = {label: as_system(s, name=label, service=options.service) for label, s in systems.items()}
    return run_sync(Run(dataset, wrapped, evaluators, options))
