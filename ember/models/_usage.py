"""Per-model token and cost accounting, safe to update from any thread.

A model whose price is unknown accumulates tokens but reports ``cost_usd=None``: an
unknown price is never summed as $0. Totals say how much is known and which models are
unpriced, so a report can print "$1.20 + unknown (2 models)" instead of a wrong number.
"""

from __future__ import annotations

import dataclasses
import threading

from ember.models._types import UsageStats

__all__ = ["UsageService", "ModelUsage", "UsageTotals"]


@dataclasses.dataclass(frozen=True)
class ModelUsage:
    model_id: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclasses.dataclass(frozen=True)
class UsageTotals:
    calls: int
    input_tokens: int
    output_tokens: int
    #: Sum over priced models only.
    known_cost_usd: float
    #: Models with calls but no known price.
    unpriced_models: tuple[str, ...]

    @property
    def cost_usd(self) -> float | None:
        """The total cost, or ``None`` if any model with calls has an unknown price."""
        return None if self.unpriced_models else self.known_cost_usd

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class UsageService:
    """Accumulates :class:`UsageStats` per model id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, ModelUsage] = {}

    def add_usage_record(self, model_id: str, usage: UsageStats) -> None:
        with self._lock:
            prev = self._usage.get(model_id) or ModelUsage(model_id)
            cost = None if prev.cost_usd is None or usage.cost_usd is None else prev.cost_usd + usage.cost_usd
            self._usage[model_id] = ModelUsage(
                model_id,
                prev.calls + 1,
                prev.input_tokens + usage.input_tokens,
                prev.output_tokens + usage.output_tokens,
                cost,
            )

    def get_usage(self, model_id: str) -> ModelUsage:
        with self._lock:
            return self._usage.get(model_id) or ModelUsage(model_id)

    def all_usage(self) -> dict[str, ModelUsage]:
        with self._lock:
            return dict(self._usage)

    def total(self) -> UsageTotals:
        with self._lock:
            records = list(self._usage.values())
        return UsageTotals(
            calls=sum(r.calls for r in records),
            input_tokens=sum(r.input_tokens for r in records),
            output_tokens=sum(r.output_tokens for r in records),
            known_cost_usd=sum(r.cost_usd for r in records if r.cost_usd is not None),
            unpriced_models=tuple(sorted(r.model_id for r in records if r.cost_usd is None)),
        )

    def reset(self, model_id: str | None = None) -> None:
        with self._lock:
            if model_id is None:
                self._usage.clear()
            else:
                self._usage.pop(model_id, None)
