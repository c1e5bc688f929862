"""A cost budget for an evaluation run: once reached, no new item is started.

Items already in flight finish and are journaled (their calls are paid for already), so
the overshoot is bounded by the run's concurrency; the run's ``stopped`` message states the
spend after they finished. Spend carried over from a resumed
journal counts. Calls whose price is unknown cannot be charged; they are counted and the
budget says so instead of pretending they were free.
"""

from __future__ import annotations

import threading

__all__ = ["CostBudget"]


class CostBudget:
    """Stops a run at ``max_usd`` of known spend."""

    def __init__(self, max_usd: float) -> None:
        if max_usd < 0:
            raise ValueError(f"max_usd must be >= 0, got {max_usd}")
        self.max_usd = float(max_usd)
        self.spent_usd = 0.0
        self.unpriced = 0
        self._lock = threading.Lock()

    def begin(self, already_spent_usd: float) -> None:
        """Start a run whose journal already records ``already_spent_usd`` of spend."""
        with self._lock:
            self.spent_usd, self.unpriced = float(already_spent_usd), 0

    def charge(self, cost_usd: float | None) -> None:
        """Add one finished item's cost (``None``: its price is unknown)."""
        with self._lock:
            if cost_usd is None:
                self.unpriced += 1
            else:
                self.spent_usd += cost_usd

    @property
    def exhausted(self) -> bool:
        return self.spent_usd >= self.max_usd

    def describe(self, *, spent_usd: float | None = None, unpriced: int | None = None) -> str:
        """Why the run stopped. Pass the final ``spent_usd`` (and ``unpriced`` item count) once
        the items in flight have finished, so the message states the whole spend."""
        spent = self.spent_usd if spent_usd is None else spent_usd
        unpriced = self.unpriced if unpriced is None else unpriced
        unknown = f" (+ {unpriced} item(s) at unknown price)" if unpriced else ""
        return f"cost budget ${self.max_usd:.4f} reached: spent ${spent:.4f}{unknown}"

    def __repr__(self) -> str:
        return f"CostBudget(max_usd={self.max_usd}, spent_usd={self.spent_usd:.6f})"
