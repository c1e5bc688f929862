"""What an evaluation produces: one record per item, and a summary per system.

Records live in the journal (SQLite), not in memory: ``results.records`` is a view that
reads them back in dataset order, so a 100,000-item run keeps only its score arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from ember.eval._metrics import Interval
from ember.eval._record import ItemRecord

if TYPE_CHECKING:
    from ember.eval._journal import Journal

__all__ = ["EvaluationResults", "RecordView"]


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
    share of items the first evaluator judged correct) and ``error_rate``. An evaluator
    named ``accuracy`` (e.g. :class:`MultipleChoiceEvaluator`) is the accuracy series when it
    comes first, and is renamed (``accuracy_2``) otherwise, as is one named ``error_rate``:
    each item counts once in every series, and ``n_items`` is the number of items. Items whose
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
