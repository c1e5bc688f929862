"""Graphs and host transforms on a Ray cluster: ``execution_options(scheduler="ray")`` and
``pmap(..., backend="ray")``.

Ray is imported only when one of them runs (:func:`ember._runtime.connect_ray` joins
``ExecutionOptions.ray_address``, else ``$RAY_ADDRESS``, else starts a local instance;
without Ray it raises :class:`~ember._runtime.RayNotInstalledError`).

**Graph nodes.** :class:`RayScheduler` submits every node as one Ray task, in topological
order, as soon as its predecessors are submitted (at most ``max_workers`` unfinished at
once, when set). A node's predecessors' outputs are passed as ``ObjectRef`` s, so Ray
resolves them in the worker and the data moves through the object store, never through the
driver; the graph inputs and each operator are ``ray.put`` once per run. In the worker the
node's inputs are merged by :meth:`GraphPlan.node_inputs`, the same function the local
schedulers use, and the operator runs in its own ``UsageScope``; its timings, pid and usage
come back for the :class:`ExecutionTrace` (``thread`` is the worker's pid).

Errors are the local schedulers': a failed operator raises :class:`NodeExecutionError`
naming the node, with the worker's original exception as ``__cause__`` (its remote
traceback added as a note); ``on_error`` and ``timeout`` behave as with ``"parallel"``.
Under ``"cancel_dependents"`` a failed node's dependents are still submitted, see the
failure in their inputs and end at once as ``skipped``. A failure under ``"cancel_all"``,
a timeout, an enclosing cancel scope or Ctrl-C ``ray.cancel`` s every unfinished task
(politely, then forcibly after :data:`CANCEL_GRACE_S`); a worker interrupted mid-call
cancels its in-flight model calls, which closes their HTTP requests.

Nothing is paid twice: tasks are submitted with ``max_retries=0``, so Ray never re-runs a
node (or an item) whose model calls may already have been made. Workers build their own
app context from their environment; API keys are never task arguments (see
:mod:`ember._runtime._ray`). Operators must pickle (cloudpickle): an ``LMModule`` with
``model_service=None`` does; one bound to an explicit ``ModelService`` does not.

Every task joins the run's cluster-wide budget (:func:`ember.models.join_budget`) before it
runs: the per-model and per-provider limits hold across all workers at once, as for
evaluation runs.

**Host transforms.** :func:`map_items` runs each item of a host ``pmap`` as a Ray task,
at most ``width`` in flight (default: the cluster's CPUs), and returns results in item
order; the first failure cancels the other items and is raised with the ``(item i of n)``
note the local path adds.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ember._runtime import UsageScope, check_cancelled, connect_ray, open_scope
from ember.models import ClusterBudget, join_budget, share_budget
from ember.xcs._compile import GraphPlan
from ember.xcs._errors import GraphError, NodeExecutionError
from ember.xcs._options import ExecutionOptions
from ember.xcs._trace import ExecutionTrace

__all__ = ["CANCEL_GRACE_S", "RayScheduler", "map_items"]

#: How often the driver checks for cancellation while it waits on Ray.
_POLL_S = 0.1
#: Seconds a politely cancelled task gets to end before it is force-cancelled (its worker killed).
CANCEL_GRACE_S = 2.0

_lock = threading.Lock()
_remotes: dict[str, Any] = {}


class _Failed:
    """The "output" of a node that did not succeed: its dependents skip themselves."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "_FAILED"


_FAILED = _Failed()


def _portable(error: BaseException) -> BaseException:
    """``error`` if it pickles, else a RuntimeError with its text; the remote traceback as a note."""
    from ray import cloudpickle

    remote = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    note = f"remote traceback (Ray worker pid {os.getpid()}):\n{remote}"
    try:
        cloudpickle.loads(cloudpickle.dumps(error))
    except Exception:
        error = RuntimeError(f"{type(error).__name__}: {error}")
    error.add_note(note)
    return error


def _run_node(
    budget: ClusterBudget,
    operator: Any,
    node_id: str,
    plan: GraphPlan,
    inputs: Mapping[str, Any],
    pred_ids: Sequence[str],
    *preds: Any,
) -> tuple[Any, dict[str, Any]]:
    """In a Ray worker: one node, with the local schedulers' input merging and usage accounting."""
    join_budget(budget)
    meta: dict[str, Any] = {"status": "skipped", "pid": os.getpid(), "start": time.time()}
    if any(isinstance(p, _Failed) for p in preds):
        meta["end"] = meta["start"]
        return _FAILED, meta
    used = UsageScope()
    try:
        with open_scope() as scope:
            try:
                with used:
                    merged = plan.node_inputs(node_id, inputs, dict(zip(pred_ids, preds)))
                    output = operator(inputs=merged)
            except BaseException:
                scope.cancel(f"node {node_id!r} was interrupted")  # close its in-flight model calls
                raise
    except Exception as error:
        meta.update(status="failed", error=_portable(error))
        output = _FAILED
    else:
        meta["status"] = "ok"
    finally:
        meta["end"] = time.time()
        usage = used.usage
        meta.update(calls=used.calls, cost_usd=usage.cost_usd, input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens)  # fmt: skip
    return output, meta


def _run_item(budget: ClusterBudget, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """In a Ray worker: one item of a host ``pmap``."""
    join_budget(budget)
    with open_scope() as scope:
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise _portable(error) from None
        except BaseException:
            scope.cancel("the item was interrupted")
            raise


def _remote(ray: Any, name: str) -> Any:
    with _lock:
        if name not in _remotes:
            if name == "node":
                _remotes[name] = ray.remote(num_returns=2, max_retries=0)(_run_node)
            else:
                _remotes[name] = ray.remote(max_retries=0)(_run_item)
        return _remotes[name]


def _cause(ray: Any, error: BaseException) -> BaseException:
    """The worker's own exception inside a ``RayTaskError``, else ``error`` itself."""
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return error


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Cancel ``refs``' tasks: politely, then forcibly for those still running after the grace."""
    if not refs:
        return
    for ref in refs:
        with contextlib.suppress(Exception):  # already finished or gone
            ray.cancel(ref, force=False)
    _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
    for ref in left:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


def _node_error(node_id: str, cause: BaseException) -> GraphError:
    if isinstance(cause, GraphError):  # FieldConflictError, MissingInputError: already name the node
        return cause
    error = NodeExecutionError(node_id, cause)
    error.__cause__ = cause
    return error


def _node_plan(plan: GraphPlan, node_id: str) -> GraphPlan:
    """The slice of ``plan`` one worker needs to merge ``node_id``'s inputs (picklable, no operators)."""
    preds = tuple((p, None if m is None else dict(m)) for p, m in plan.preds[node_id])
    return GraphPlan(
        order=(node_id,), levels=((node_id,),), operators={}, preds={node_id: preds},
        succs={node_id: ()}, sinks=(), required={node_id: tuple(plan.required[node_id])},
    )  # fmt: skip


class RayScheduler:
    """Every node a Ray task; predecessors' outputs flow through Ray's object store."""

    name = "ray"

    def run_plan(
        self, plan: GraphPlan, inputs: Mapping[str, Any], options: ExecutionOptions, trace: ExecutionTrace
    ) -> dict[str, Any]:
        ray = connect_ray(options.ray_address)
        remote = _remote(ray, "node")
        # The wall-clock time of the trace's origin: worker timestamps are wall-clock.
        wall0 = time.time() - (time.perf_counter() - trace.origin)
        inputs_ref, budget = ray.put(dict(inputs)), ray.put(share_budget(ray))
        limit = options.max_workers or len(plan.order)
        queue = list(plan.order)  # topological: a node's predecessors are submitted before it
        out_refs: dict[str, Any] = {}
        pending: dict[Any, str] = {}  # meta ref -> node id
        errors: list[GraphError] = []
        ok: list[str] = []

        def submit() -> None:
            while queue and len(pending) < limit:
                node_id = queue.pop(0)
                pred_ids = [p for p, _ in plan.preds[node_id]]
                out, meta = remote.options(name=f"ember.xcs:{node_id}").remote(
                    budget, ray.put(plan.operators[node_id]), node_id, _node_plan(plan, node_id), inputs_ref, pred_ids,
                    *(out_refs[p] for p in pred_ids),
                )  # fmt: skip
                out_refs[node_id] = out
                pending[meta] = node_id

        def record(node_id: str, meta: Mapping[str, Any]) -> None:
            rec = trace.nodes[node_id]
            rec.status = meta["status"]
            if rec.status == "skipped":
                return
            rec.start, rec.end, rec.thread = meta["start"] - wall0, meta["end"] - wall0, meta["pid"]
            rec.calls, rec.cost_usd = meta["calls"], meta["cost_usd"]
            rec.input_tokens, rec.output_tokens = meta["input_tokens"], meta["output_tokens"]

        def fail(node_id: str, cause: BaseException) -> None:
            error = _node_error(node_id, cause)
            rec = trace.nodes[node_id]
            rec.status, rec.error = "failed", str(error)
            errors.append(error)
            if options.on_error == "cancel_all":
                raise error

        try:
            submit()
            while pending:
                check_cancelled()
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
                for ref in ready:
                    node_id = pending.pop(ref)
                    try:
                        meta = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the worker died, the task was cancelled
                        fail(node_id, _cause(ray, error))
                        continue
                    record(node_id, meta)
                    if meta["status"] == "ok":
                        ok.append(node_id)
                    elif meta["status"] == "failed":
                        fail(node_id, meta["error"])
                submit()
        except BaseException as stop:
            unfinished = list(pending)
            for ref in unfinished:
                rec = trace.nodes[pending[ref]]
                rec.status, rec.error = "cancelled", f"{type(stop).__name__}: {stop}" if str(stop) else "cancelled"
            _cancel(ray, unfinished)
            raise
        if errors:
            raise errors[0]
        values = ray.get([out_refs[n] for n in ok])
        return dict(zip(ok, values))


def cluster_cpus(address: str | None = None) -> int:
    """The CPUs of the cluster Ray is connected to (connecting first): ``pmap``'s default width."""
    ray = connect_ray(address)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def map_items(
    fn: Callable[..., Any],
    size: int,
    item: Callable[[int], tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    width: int | None,
    name: str,
    address: str | None = None,
) -> list[Any]:
    """``fn(*args, **kwargs)`` for each ``item(i)``, ``i < size``, as Ray tasks; results in order.

    At most ``width`` (default: the cluster's CPUs) are in flight. The first failure cancels
    the items still in flight and is raised with an ``(item i of n in name)`` note.
    """
    ray = connect_ray(address)
    remote = _remote(ray, "item")
    width = width or cluster_cpus(address)
    fn_ref, budget = ray.put(fn), ray.put(share_budget(ray))
    results: list[Any] = [None] * size
    pending: dict[Any, int] = {}
    next_index = 0
    try:
        while next_index < size or pending:
            while next_index < size and len(pending) < width:
                args, kwargs = item(next_index)
                ref = remote.options(name=f"ember.xcs:{name}[{next_index}]").remote(budget, fn_ref, args, kwargs)
                pending[ref] = next_index
                next_index += 1
            check_cancelled()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except ray.exceptions.RayError as failure:
                    error = _cause(ray, failure)
                    error.add_note(f"(item {index} of {size} in {name})")
                    raise error from None
    except BaseException:
        _cancel(ray, list(pending))
        raise
    return results
