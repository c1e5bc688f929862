"""What an evaluation produces: one record per item, and a summary per system.

Records live in the journal (SQLite), not in memory: ``results.records`` is a view that
reads them back in dataset order, so a 100,000-item run keeps only its score arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from ember.eval._metrics import Interval

if TYPE_CHECKING:
    from ember.eval._journal import Journal

__all__ = ["ItemRecord", "EvaluationResults", "RecordView"]


@dataclasses.dataclass(frozen=True, slots=True)
class ItemRecord:
    """One system's outcome on one item: output, scores, cost and timing, or the error.

    ``attempts`` counts provider attempts over all of the item's calls, so
    ``attempts - calls`` is how many retries the item needed. ``cost_usd`` is ``None``
    when any call's price is unknown.
    """

    system: str
    item_id: str
    position: int
    output: str | None
    scores: Mapping[str, float]
    correct: Mapping[str, bool]
    details: Mapping[str, Any]
    latency_s: float
    cost_usd: float | None
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    attempts: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"scores": dict(self.scores), "correct": dict(self.correct), "details": dict(self.details)}


class RecordView(Sequence[ItemRecord]):
    """A system's records, read from the journal on demand, in dataset order."""

    def __init__(self, journal: Journal, system: str) -> None:
        self._journal, self._system = journal, system

    def __len__(self) -> int:
        return self._journal.count(self._system)

    def __iter__(self) -> Iterator[ItemRecord]:
        return self._journal.records(self._system)

    @overload
    def __getitem__(self, index: int) -> ItemRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[ItemRecord]: ...
    def __getitem__(self, index: int | slice) -> ItemRecord | list[ItemRecord]:
        if isinstance(index, slice):
            return list(self)[index]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(index)
        return self._journal.record_at(self._system, index % n)

    def __repr__(self) -> str:
        return f"<{len(self)} records of {self._system!r}>"


@dataclasses.dataclass(frozen=True)
class EvaluationResults:
    """A system's evaluation: ``metrics["accuracy"]`` and friends, intervals, cost, latency, records.

    ``metrics`` holds every evaluator's mean score under its name, plus ``accuracy`` (the
    share of items the first evaluator judged correct) and ``error_rate``. Items whose
    system call failed count as wrong and are listed in ``n_errors``. ``stopped`` says
    why a run ended early (a cost budget), else ``None``.
    """

    system: str
    metrics: dict[str, float]
    intervals: dict[str, Interval]
    n_items: int
    n_errors: int
    cost_usd: float | None
    known_cost_usd: float
    input_tokens: int
    output_tokens: int
    calls: int
    retries: int
    latency: dict[str, float]
    wall_s: float
    records: Sequence[ItemRecord] = dataclasses.field(repr=False, compare=False)
    stopped: str | None = None

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]

    @property
    def cost_label(self) -> str:
        """``$0.0123``, or ``$0.0100 + unknown`` / ``unknown`` where prices are not known: never a false $0."""
        if self.cost_usd is not None:
            return f"${self.cost_usd:.4f}"
        return f"${self.known_cost_usd:.4f} + unknown" if self.known_cost_usd else "unknown"

    def to_dict(self, *, records: bool = False) -> dict[str, Any]:
        data = {
            field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name not in ("records", "intervals")
        }
        data["intervals"] = {name: interval.to_dict() for name, interval in self.intervals.items()}
        data["cost_label"] = self.cost_label
        if records:
            data["records"] = [record.to_dict() for record in self.records]
        return data

    def __str__(self) -> str:
        ci = self.intervals.get("accuracy")
        acc = f"{ci:.3f}" if ci is not None else f"{self.accuracy:.3f}"
        tail = f", stopped: {self.stopped}" if self.stopped else ""
        return (
            f"{self.system}: accuracy {acc} over {self.n_items} items ({self.n_errors} errors), "
            f"cost {self.cost_label}, latency p50 {self.latency['p50']:.3f}s p90 {self.latency['p90']:.3f}s{tail}"
        )
