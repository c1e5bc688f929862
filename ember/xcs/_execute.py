"""execute_graph: run an :class:`XCSGraph` with the options in effect.

What it returns (``outputs=``):

- ``"sink"`` (default): the output of the graph's single sink; when the graph has several
  sinks, a dict ``{sink_id: output}``;
- ``"all"``: a dict ``{node_id: output}`` of every node.

The run's :class:`ExecutionTrace` comes back with ``trace=True`` as ``(result, trace)``.
When a run fails, the error (a :class:`GraphError`) carries it as ``error.trace``.

>>> from ember.xcs import XCSGraph, execute_graph
>>> g = XCSGraph()
>>> g.add_node(operator=lambda *, inputs: {"n": inputs["n"] + 1}, node_id="inc")
'inc'
>>> g.add_node(operator=lambda *, inputs: {"n": inputs["n"] * 10}, node_id="times10")
'times10'
>>> g.add_edge(from_id="inc", to_id="times10")
>>> execute_graph(graph=g, inputs={"n": 1})
{'n': 20}
>>> result, trace = execute_graph(graph=g, inputs={"n": 1}, outputs="all", trace=True)
>>> result, [trace[n].status for n in result]
({'inc': {'n': 2}, 'times10': {'n': 20}}, ['ok', 'ok'])
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

from ember._runtime import open_scope
from ember.xcs._compile import compile_graph
from ember.xcs._errors import GraphError, GraphTimeoutError
from ember.xcs._graph import XCSGraph
from ember.xcs._options import ExecutionOptions, OptionOverrides, current_execution_options
from ember.xcs._schedulers import get_scheduler
from ember.xcs._trace import ExecutionTrace, NodeTrace

__all__ = ["execute_graph"]


def _options(options: ExecutionOptions | OptionOverrides | None) -> ExecutionOptions:
    if options is None:
        return current_execution_options()
    if isinstance(options, OptionOverrides):
        return options.resolve()
    if isinstance(options, ExecutionOptions):
        return options
    raise GraphError(f"options must come from execution_options(...) or be ExecutionOptions, got {type(options).__name__}")


def execute_graph(
    *,
    graph: XCSGraph,
    inputs: Mapping[str, Any] | None = None,
    options: ExecutionOptions | OptionOverrides | None = None,
    outputs: Literal["sink", "all"] = "sink",
    trace: bool = False,
) -> Any:
    """Run ``graph`` on ``inputs``; see the module docstring for what comes back."""
    if not isinstance(graph, XCSGraph):
        raise GraphError(f"graph must be an XCSGraph, got {type(graph).__name__}")
    if outputs not in ("sink", "all"):
        raise GraphError(f"outputs must be 'sink' or 'all', got {outputs!r}")
    if len(graph) == 0:
        raise GraphError("the graph has no nodes")
    if inputs is None:
        inputs = {}
    elif not isinstance(inputs, Mapping):
        inputs = dict(inputs)  # a pydantic model iterates as (field, value) pairs
    resolved = _options(options)
    plan = compile_graph(graph)
    scheduler = get_scheduler(resolved.scheduler, plan)
    run_trace = ExecutionTrace(
        scheduler=scheduler.name,
        nodes={n: NodeTrace(n, type(op).__name__) for n, op in plan.operators.items()},
        origin=time.perf_counter(),
    )
    timed_out = threading.Event()
    try:
        with open_scope() as scope:
            timer = None
            if resolved.timeout is not None:
                def expire() -> None:
                    timed_out.set()
                    scope.cancel(f"graph run timed out after {resolved.timeout} s")

                timer = threading.Timer(resolved.timeout, expire)
                timer.daemon = True
                timer.start()
            try:
                results = scheduler.run_plan(plan, inputs, resolved, run_trace)
                scope.check()  # nodes that were cancelled mid-call returned: the run did not finish
            except BaseException as error:
                scope.cancel(f"{type(error).__name__} in the graph run")  # Ctrl-C: close in-flight calls
                raise
            finally:
                if timer is not None:
                    timer.cancel()
    except concurrent.futures.CancelledError as cancelled:
        if timed_out.is_set():
            unfinished = [n for n, rec in run_trace.nodes.items() if rec.status != "ok"]
            error = GraphTimeoutError(resolved.timeout or 0.0, unfinished)
            error.trace = run_trace
            raise error from cancelled
        raise
    except GraphError as error:
        error.trace = run_trace
        raise
    finally:
        run_trace.duration = time.perf_counter() - run_trace.origin
    if outputs == "all":
        result: Any = results
    elif len(plan.sinks) == 1:
        result = results[plan.sinks[0]]
    else:
        result = {n: results[n] for n in plan.sinks}
    return (result, run_trace) if trace else result
