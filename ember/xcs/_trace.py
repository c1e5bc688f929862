"""ExecutionTrace: what happened to every node of one graph run.

Per node: start and end (seconds from the run's start, ``time.perf_counter``), status
(``ok``, ``failed``, ``cancelled``: it was running when the run was cancelled, ``skipped``:
it never started because a node it depends on failed or the run was stopped), the thread
it ran on, its model calls' tokens and cost (each node runs in its own
:class:`~ember._runtime.UsageScope`) and the error text if any.

``to_perfetto()`` gives the Chrome trace-event JSON that https://ui.perfetto.dev and
``chrome://tracing`` open: one complete (``"ph": "X"``) event per node that started, one
track per worker thread. ``save(path)`` writes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal

__all__ = ["ExecutionTrace", "NodeTrace"]

Status = Literal["ok", "failed", "cancelled", "skipped"]


@dataclasses.dataclass(slots=True)
class NodeTrace:
    node_id: str
    operator: str
    status: Status = "skipped"
    start: float | None = None
    end: float | None = None
    thread: int | None = None
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    error: str | None = None

    @property
    def duration(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start


@dataclasses.dataclass(slots=True)
class ExecutionTrace:
    """One run: the scheduler that ran it, its wall time and a :class:`NodeTrace` per node."""

    scheduler: str
    nodes: dict[str, NodeTrace]
    duration: float = 0.0
    #: ``time.perf_counter()`` at the run's start; node times are relative to it.
    origin: float = 0.0

    def __getitem__(self, node_id: str) -> NodeTrace:
        return self.nodes[node_id]

    @property
    def total_tokens(self) -> int:
        return sum(n.input_tokens + n.output_tokens for n in self.nodes.values())

    @property
    def cost_usd(self) -> float | None:
        costs = [n.cost_usd for n in self.nodes.values()]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    def to_perfetto(self) -> str:
        """Chrome trace-event JSON: a list of ``{"name", "ph": "X", "ts", "dur", "pid", "tid", "args"}``."""
        tids: dict[int | None, int] = {}
        events = []
        for n in self.nodes.values():
            if n.start is None:
                continue
            end = n.end if n.end is not None else self.duration
            events.append({
                "name": n.node_id,
                "cat": n.operator,
                "ph": "X",
                "ts": round(n.start * 1e6, 3),
                "dur": round(max(end - n.start, 0.0) * 1e6, 3),
                "pid": os.getpid(),
                "tid": tids.setdefault(n.thread, len(tids)),
                "args": {
                    "operator": n.operator,
                    "status": n.status,
                    "calls": n.calls,
                    "input_tokens": n.input_tokens,
                    "output_tokens": n.output_tokens,
                    "cost_usd": n.cost_usd,
                    "error": n.error,
                },
            })
        return json.dumps(events)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_perfetto` to ``path`` (open it in ui.perfetto.dev)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_perfetto())

    def table(self) -> str:
        """A plain-text table of the nodes, in start order."""
        rows = sorted(self.nodes.values(), key=lambda n: (n.start is None, n.start or 0.0))
        lines = [f"{'node':<24} {'status':<9} {'start ms':>9} {'dur ms':>9} {'tokens':>7}"]
        for n in rows:
            start = "-" if n.start is None else f"{n.start * 1e3:.1f}"
            dur = "-" if n.duration is None else f"{n.duration * 1e3:.1f}"
            lines.append(f"{n.node_id:<24} {n.status:<9} {start:>9} {dur:>9} {n.input_tokens + n.output_tokens:>7}")
        return "\n".join(lines)
