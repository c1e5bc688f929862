"""What an evaluator is: a scorer of one system output against one dataset item.

Evaluators see the whole :class:`DatasetItem` (not just the reference answer), because
scoring multiple choice needs the choices and scoring a mixed dataset needs the item's
metadata. Every evaluator is usable synchronously (``evaluator(output, item)``) and from
the pipeline's event loop (``await evaluator.aevaluate(...)``); only evaluators that call
a model or a subprocess override the async form.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

from ember.data import DatasetItem
from ember.models import UsageStats

__all__ = ["EvaluationResult", "Evaluator", "RoutedEvaluator"]


@dataclasses.dataclass(frozen=True, slots=True)
class EvaluationResult:
    """``score`` in [0, 1]; ``is_correct`` feeds accuracy; ``usage`` is set by evaluators that call models."""

    score: float
    is_correct: bool
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    usage: UsageStats | None = None

    @classmethod
    def binary(cls, correct: bool, **metadata: Any) -> EvaluationResult:
        return cls(float(correct), bool(correct), metadata)


class Evaluator(abc.ABC):
    """Scores ``output`` for ``item``. ``name`` keys the evaluator's metric in results."""

    name: str = "score"

    @abc.abstractmethod
    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult: ...

    async def aevaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        return self.evaluate(output, item)

    def __call__(self, output: str, item: DatasetItem) -> EvaluationResult:
        return self.evaluate(output, item)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class RoutedEvaluator(Evaluator):
    """Picks an evaluator per item from ``item.metadata[key]``: one metric over a mixed dataset.

    E.g. ``RoutedEvaluator({"number": NumericEvaluator(), "text": ExactMatchEvaluator(contains=True)})``
    scores arithmetic numerically and facts by text, as one ``correct`` metric.
    """

    def __init__(
        self, routes: Mapping[str, Evaluator], *, key: str = "answer_type", default: Evaluator | None = None, name: str = "correct"
    ) -> None:
        self.routes, self.key, self.default, self.name = dict(routes), key, default, name

    def _pick(self, item: DatasetItem) -> Evaluator:
        route = item.metadata.get(self.key)
        evaluator = self.routes.get(route, self.default)
        if evaluator is None:
            raise KeyError(f"item {item.id!r}: no evaluator for {self.key}={route!r} (routes: {', '.join(self.routes)})")
        return evaluator

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        return self._pick(item).evaluate(output, item)

    async def aevaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        return await self._pick(item).aevaluate(output, item)
