"""Schedulers: the strategies that run a :class:`GraphPlan`, and the one node runner they share.

- :class:`SequentialScheduler` runs nodes one at a time in topological order, on the
  calling thread: the reference every other scheduler must agree with.
- :class:`WaveScheduler` runs level by level (see ``XCSGraph.levels``); the nodes of a level
  run concurrently, and a level starts only when the previous one has ended (a barrier).
- :class:`ParallelScheduler` is dependency-driven: a node starts the moment its last
  predecessor ends, so a slow branch never holds back an unrelated one.

Concurrent schedulers run nodes inside one :class:`~ember._runtime.TaskGroup` per run (per
level for waves): at most ``max_workers`` *drivers* are spawned on the runtime's shared
worker threads, and each driver runs ready nodes one after another until none is left.
There is no thread pool per run, and a node whose predecessor just ended on a driver runs
on that same driver without a thread hand-off. Model calls made by nodes go through the
shared runtime, so ``max_workers`` bounds how many *nodes* run at once and never multiplies
a model's concurrency budget. Cancelling the group (a failure under ``on_error="cancel_all"``,
a timeout, Ctrl-C, an enclosing cancel scope) cancels every in-flight model call, which
closes its HTTP request.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ember._runtime import Cancelled, TaskGroup, UsageScope, check_cancelled, current_scope
from ember.xcs._compile import GraphPlan
from ember.xcs._errors import GraphError, NodeExecutionError
from ember.xcs._options import ExecutionOptions
from ember.xcs._ray_scheduler import RayScheduler
from ember.xcs._trace import ExecutionTrace

__all__ = ["ParallelScheduler", "Scheduler", "SequentialScheduler", "WaveScheduler", "get_scheduler"]

#: Nodes run at once when ``max_workers`` is None.
DEFAULT_MAX_WORKERS = 32


class Scheduler(Protocol):
    """Runs every node of ``plan`` and returns ``{node_id: output}`` of the nodes that ran.

    Records each node in ``trace``. A failed node's error (a :class:`GraphError`) is raised
    once the run has stopped: at once with ``on_error="cancel_all"``, after every node that
    does not depend on it has run with ``"cancel_dependents"``.
    """

    name: str

    def run_plan(
        self, plan: GraphPlan, inputs: Mapping[str, Any], options: ExecutionOptions, trace: ExecutionTrace
    ) -> dict[str, Any]: ...


class _Run:
    """One run's shared state: outputs, the trace and the errors, written by any thread."""

    __slots__ = ("plan", "inputs", "options", "trace", "outputs", "errors", "t0", "stopped")

    def __init__(self, plan: GraphPlan, inputs: Mapping[str, Any], options: ExecutionOptions, trace: ExecutionTrace):
        self.plan, self.inputs, self.options, self.trace = plan, inputs, options, trace
        self.outputs: dict[str, Any] = {}
        self.errors: list[GraphError] = []
        self.t0 = trace.origin
        self.stopped = False

    def run_node(self, node_id: str) -> bool:
        """Run one node; True if it succeeded. Under ``cancel_all`` a failure is raised."""
        record = self.trace.nodes[node_id]
        record.thread = threading.get_ident()
        record.start = time.perf_counter() - self.t0
        error: GraphError | None = None
        used = UsageScope()
        try:
            with used:
                merged = self.plan.node_inputs(node_id, self.inputs, self.outputs)
                output = self.plan.operators[node_id](inputs=merged)
        except concurrent.futures.CancelledError as cancelled:
            scope = current_scope()
            if scope is not None and scope.cancelled:  # the run was cancelled, not this node's doing
                record.status, record.error = "cancelled", str(cancelled) or "cancelled"
                return False
            error = _node_error(node_id, cancelled)
        except GraphError as graph_error:  # FieldConflictError, MissingInputError: already name the node
            error = graph_error
        except Exception as cause:
            error = _node_error(node_id, cause)
        except BaseException:
            record.status, record.error = "cancelled", "interrupted"
            raise
        else:
            self.outputs[node_id] = output
            record.status = "ok"
            return True
        finally:
            record.end = time.perf_counter() - self.t0
            record.calls, record.cost_usd = used.calls, used.usage.cost_usd
            record.input_tokens, record.output_tokens = used.usage.input_tokens, used.usage.output_tokens
        record.status, record.error = "failed", str(error)
        self.errors.append(error)
        if self.options.on_error == "cancel_all":
            self.stopped = True
            raise error
        return False

    def runnable(self, node_id: str) -> bool:
        """Every predecessor succeeded (so its inputs exist)."""
        return all(pred in self.outputs for pred, _ in self.plan.preds[node_id])

    def finish(self) -> dict[str, Any]:
        if self.errors:
            raise self.errors[0]
        return self.outputs


def _node_error(node_id: str, cause: BaseException) -> NodeExecutionError:
    error = NodeExecutionError(node_id, cause)
    error.__cause__ = cause  # as `raise error from cause` would, wherever it is raised later
    return error


class _Drivers:
    """Up to ``limit`` spawned loops that run ready nodes until none is left."""

    def __init__(
        self, run: _Run, group: TaskGroup, limit: int, release: Callable[[str, bool], list[str]] | None = None
    ) -> None:
        self.run, self.group, self.limit, self.release = run, group, limit, release
        self.ready: deque[str] = deque()
        self.active = 0
        self.lock = threading.Lock()

    def submit(self, nodes: list[str]) -> None:
        """Queue nodes and start drivers for them (called in the group's block)."""
        with self.lock:
            self.ready.extend(nodes)
            wanted = min(self.limit - self.active, len(self.ready))
            self.active += wanted
        self._spawn(wanted)

    def _spawn(self, count: int) -> None:
        for k in range(count):
            try:
                self.group.spawn(self._drive)
            except Cancelled:
                with self.lock:
                    self.active -= count - k
                return

    def _drive(self) -> None:
        scope = current_scope()
        try:
            while True:
                with self.lock:
                    if not self.ready or self.run.stopped or (scope is not None and scope.cancelled):
                        return
                    node_id = self.ready.popleft()
                ok = self.run.run_node(node_id)
                with self.lock:
                    if self.release is not None:
                        self.ready.extend(self.release(node_id, ok))
                    # This driver takes the next ready node itself; start others for the rest.
                    wanted = max(0, min(self.limit - self.active, len(self.ready) - 1))
                    self.active += wanted
                self._spawn(wanted)
        finally:
            with self.lock:
                self.active -= 1


def _limit(options: ExecutionOptions) -> int:
    return options.max_workers or DEFAULT_MAX_WORKERS


class SequentialScheduler:
    """One node at a time, in topological order, on the calling thread."""

    name = "sequential"

    def run_plan(
        self, plan: GraphPlan, inputs: Mapping[str, Any], options: ExecutionOptions, trace: ExecutionTrace
    ) -> dict[str, Any]:
        run = _Run(plan, inputs, options, trace)
        for node_id in plan.order:
            check_cancelled()
            if run.runnable(node_id):
                run.run_node(node_id)
        return run.finish()


class WaveScheduler:
    """Level by level; the nodes of one level run concurrently, levels are barriers."""

    name = "wave"

    def run_plan(
        self, plan: GraphPlan, inputs: Mapping[str, Any], options: ExecutionOptions, trace: ExecutionTrace
    ) -> dict[str, Any]:
        run = _Run(plan, inputs, options, trace)
        for level in plan.levels:
            todo = [n for n in level if run.runnable(n)]
            if len(todo) == 1:  # a lone node runs inline: no group, no hand-off
                check_cancelled()
                run.run_node(todo[0])
            elif todo:
                with TaskGroup() as group:
                    _Drivers(run, group, _limit(options)).submit(todo)
        return run.finish()


class ParallelScheduler:
    """Dependency-driven: each node starts as soon as all its predecessors have ended."""

    name = "parallel"

    def run_plan(
        self, plan: GraphPlan, inputs: Mapping[str, Any], options: ExecutionOptions, trace: ExecutionTrace
    ) -> dict[str, Any]:
        run = _Run(plan, inputs, options, trace)
        waiting = {n: len(preds) for n, preds in plan.preds.items()}
        succs = plan.succs

        def release(node_id: str, ok: bool) -> list[str]:  # under the drivers' lock
            if not ok:
                return []  # its dependents never reach zero: they stay "skipped"
            ready = []
            for nxt in succs[node_id]:
                waiting[nxt] -= 1
                if waiting[nxt] == 0:
                    ready.append(nxt)
            return ready

        with TaskGroup() as group:
            _Drivers(run, group, _limit(options), release).submit([n for n, k in waiting.items() if k == 0])
        return run.finish()


_SCHEDULERS: dict[str, Scheduler] = {
    "sequential": SequentialScheduler(),
    "wave": WaveScheduler(),
    "parallel": ParallelScheduler(),
    "ray": RayScheduler(),  # Ray is imported only when it runs a plan
}


def get_scheduler(name: str, plan: GraphPlan) -> Scheduler:
    """The scheduler called ``name``; "auto" is sequential for a chain, parallel otherwise."""
    if name == "auto":
        name = "sequential" if plan.is_chain else "parallel"
    return _SCHEDULERS[name]
