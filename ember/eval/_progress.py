"""A live progress bar: items done, rate, ETA, retries under way, calls in flight, spend.

A run that retries through a wave of 429s looks stuck unless it says so; the status text
reads the model service's live counters (``service.stats``), so retries inside an
ensemble show up even though the pipeline never sees them one by one. Drawn with rich on
stderr, only when stderr is a terminal unless asked for.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from ember.eval._budget import CostBudget

if TYPE_CHECKING:
    from ember.eval._record import ItemRecord

__all__ = ["ProgressDisplay"]


class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} it/s" if speed else "- it/s", style="progress.data.speed")


class ProgressDisplay:
    """Shows one run's progress; a no-op when disabled. ``stats`` is a service's ``CallStats``."""

    def __init__(
        self,
        total: int | None,
        *,
        description: str = "evaluating",
        stats: Any = None,
        budget: CostBudget | None = None,
        enabled: bool | None = None,
        console: Console | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self._stats, self._budget = stats, budget
        self._spent, self._unpriced, self._retried_items, self._errors = 0.0, 0, 0, 0
        self._last_status = 0.0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
            refresh_per_second=8,
        )
        self._task = self._progress.add_task(description, total=total, status="")

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._refresh_status(force=True)
            self._progress.stop()

    def skip(self, n: int, *, spent_usd: float = 0.0, unpriced: int = 0) -> None:
        """Count items (and spend) finished by an earlier run, resumed from the journal."""
        self._spent, self._unpriced = self._spent + spent_usd, self._unpriced + unpriced
        if self.enabled and n:
            self._progress.reset(self._task, completed=n)  # reset: keep them out of the rate

    def advance(self, record: ItemRecord) -> None:
        if not self.enabled:
            return
        if record.cost_usd is None:
            self._unpriced += 1
        else:
            self._spent += record.cost_usd
        self._retried_items += record.attempts > record.calls
        self._errors += not record.ok
        self._progress.advance(self._task)
        self._refresh_status()

    def _refresh_status(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < 0.1:
            return
        self._last_status = now
        parts = []
        if self._stats is not None:
            parts.append(f"in flight {self._stats.in_flight}")
            parts.append(f"retrying {self._stats.waiting_to_retry} (total {self._stats.retries})")
        spend = f"${self._spent:.4f}" + (" + unknown" if self._unpriced else "") if self._spent or not self._unpriced else "unknown"
        if self._budget is not None:
            spend += f" of ${self._budget.max_usd:.2f}"
        parts.append(f"spend {spend}")
        if self._errors:
            parts.append(f"[red]errors {self._errors}[/red]")
        self._progress.update(self._task, status=" · ".join(parts))
