"""One system's outcome on one item: what the journal stores and the results read back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["ItemRecord"]


@dataclasses.dataclass(frozen=True, slots=True)
class ItemRecord:
    """One system's outcome on one item: output, scores, cost and timing, or the error.

    ``attempts`` counts provider attempts over all of the item's calls, so
    ``attempts - calls`` is how many retries the item needed. ``cost_usd`` is ``None``
    when any call's price is unknown, and for a failed item when any of its calls failed
    (whether the provider billed failed work is not something Ember can see: never a false $0).
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
