"""``jit``: run an operator's sub-operator calls concurrently, without changing what it computes.

Design: asynchronous dispatch, not replay
-----------------------------------------
A compound AI system's ``forward`` is ordinary Python: it branches on answers, loops until
a verifier agrees, builds prompts from earlier outputs. A jit that traces one run and
replays the recorded graph changes results as soon as a later input takes another branch,
and a jit that changes results is worse than none. So ``jit`` never replays. It runs
``forward`` itself, every time, with the operator call hook of
:mod:`ember.operators._intercept` switched on:

- each sub-operator call ``op(inputs=...)`` is started at once, on a
  :class:`~ember._runtime.TaskGroup` worker thread (in a copy of the caller's context), and
  ``forward`` immediately gets a lazy result (:class:`~ember.xcs._lazy.Lazy`) back;
- the lazy result blocks only when Python *reads* it (attribute/item access, iteration,
  ``str``, ``bool``, ``==``, ``isinstance``...). Passing it on unread, as ``inputs=`` of
  another sub-operator or inside a dict/list, does not block ``forward``: the dependent
  call resolves its inputs on its own thread before it runs, so data dependencies keep
  their order;
- at the end, whatever ``forward`` returns is resolved (recursively, through dicts, lists,
  tuples and model fields), and the TaskGroup block waits for every started call. A failing
  call cancels the calls still in flight (closing their HTTP requests) and its error is
  raised, as the eager call would have raised it.

Independent calls written one after another therefore overlap on their own, and control
flow that depends on a value stays exactly eager-correct: it simply forces the value. The
cost of a miss is nothing: a call that ``forward`` reads at once runs like an eager call.

Differences from eager, by design: calls overlap, so side effects inside independent
sub-operators may interleave, and when two independent calls both fail the one that fails
first in time is raised. A lazy result is not an instance of the value's type for C-level
checks: put ``result.field`` (which reads it) rather than the result object itself into a
pydantic model you construct in ``forward``. Sub-operator calls made from threads or
TaskGroups that ``forward`` opens itself run eagerly (the hook sees it is not on the jit's
thread and falls back).

Plans, cache and stats
----------------------
The mode decides how a :class:`~ember.xcs._plan.Plan` (for introspection and pictures;
never for execution) is built, once per cache key:

- ``TRACE``: record the calls of the first run: operator types, issue order, ``data``
  edges (a lazy result passed unread into another call) and ``read`` edges (``forward`` read
  a result before issuing a later call);
- ``STRUCTURAL``: the sub-operator fields of the operator pytree, without running anything;
- ``ENHANCED``: the trace, with each call labelled by its field path, plus the fields that
  were never called;
- no mode (``AUTO``): ``ENHANCED`` for an operator with sub-operator fields, else ``TRACE``.

The cache key is the operator's structure (its type and pytree treedef, which holds the
static fields: model names, prompts...) and the inputs' structure (field names and value
types). :func:`jit_stats` (also ``Jitted.stats`` / ``jitted_fn.stats``) reports hits,
misses, trace time (runs that built a plan), run time (runs that hit), calls dispatched and
the plans.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import jax
from pydantic import BaseModel

from ember._runtime import TaskGroup, current_scope
from ember.operators import Operator, intercept_calls
from ember.xcs._lazy import Call, Lazy, lazy_calls_in, resolve
from ember.xcs._plan import Plan, PlanNode, structural_nodes

__all__ = ["JITMode", "JitStats", "jit", "jit_stats"]

T = TypeVar("T")


class JITMode(enum.StrEnum):
    """How ``jit`` builds its plan; execution is always asynchronous dispatch."""

    AUTO = "auto"
    TRACE = "trace"
    STRUCTURAL = "structural"
    ENHANCED = "enhanced"


@dataclasses.dataclass
class JitStats:
    """Counters of one jitted class or function (shared by all its instances)."""

    mode: JITMode
    hits: int = 0
    misses: int = 0
    runs: int = 0
    calls: int = 0  # sub-operator calls dispatched, over all runs
    trace_time_s: float = 0.0  # wall time of the runs that built a plan (misses)
    run_time_s: float = 0.0  # wall time of the runs that reused one (hits)
    plans: dict[Any, Plan] = dataclasses.field(default_factory=dict, repr=False)
    last_plan: Plan | None = dataclasses.field(default=None, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value, "hits": self.hits, "misses": self.misses, "runs": self.runs,
            "calls": self.calls, "plans": len(self.plans),
            "trace_time_s": round(self.trace_time_s, 4), "run_time_s": round(self.run_time_s, 4),
        }


def _mode(mode: JITMode | str | None) -> JITMode:
    if mode is None:
        return JITMode.AUTO
    if isinstance(mode, JITMode):
        return mode
    try:
        return JITMode(str(mode).lower())
    except ValueError:
        choices = ", ".join(m.value for m in JITMode)
        raise ValueError(f"unknown JIT mode {mode!r}; choose one of: {choices}") from None


# -- keys -------------------------------------------------------------------------------


def _input_structure(value: Any) -> Any:
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__ or {}
        names = (*type(value).model_fields, *extra)
        return (type(value), tuple((n, type(getattr(value, n)).__name__) for n in names))
    if isinstance(value, Mapping):
        return ("mapping", tuple(sorted((str(k), type(v).__name__) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_input_structure(v) for v in value))
    return type(value)


def _operator_key(op: Operator) -> Any:
    try:
        treedef = jax.tree_util.tree_structure(op)
        hash(treedef)
    except Exception:  # an unhashable static field: key by type only
        return type(op)
    return (type(op), treedef)


# -- one run ----------------------------------------------------------------------------


class _Session:
    """One jitted run: the hook that dispatches sub-calls, and what it records."""

    def __init__(self, group: TaskGroup, record: bool) -> None:
        self.group, self.record = group, record
        self.scope = current_scope()
        self.thread = threading.get_ident()
        self.calls: list[Call] = []
        self.edges: list[tuple[int, int, str]] = []
        self.read: set[int] = set()  # calls whose value forward read so far
        self._lock = threading.Lock()

    def hook(self, op: Any, inputs: Any, call: Callable[[Any], Any]) -> Any:
        if threading.get_ident() != self.thread or current_scope() is not self.scope:
            return call(resolve(inputs))  # from a thread or group forward opened itself: eager
        task = Call(len(self.calls), op, inputs, call, on_read=self._on_read)
        if self.record:
            data = {dep.index for dep in lazy_calls_in(inputs)}
            self.edges.extend((d, task.index, "data") for d in sorted(data))
            with self._lock:
                reads = sorted(self.read - data)
            self.edges.extend((r, task.index, "read") for r in reads)
        self.calls.append(task)
        self.group.spawn(task.start)
        return Lazy(task)

    def _on_read(self, call: Call) -> None:
        if threading.get_ident() == self.thread:
            with self._lock:
                self.read.add(call.index)


def _run(stats: JitStats, key: Any, root: Any, body: Callable[[], T]) -> T:
    mode = stats.mode
    with stats._lock:
        plan = stats.plans.get(key)
    hit = plan is not None
    record = not hit and mode in (JITMode.TRACE, JITMode.ENHANCED)
    started = time.perf_counter()
    with TaskGroup() as group:
        session = _Session(group, record)
        with intercept_calls(session.hook):
            result = body()
        result = resolve(result)
    elapsed = time.perf_counter() - started
    if not hit:
        plan = _build_plan(mode, session, root)
    with stats._lock:
        stats.runs += 1
        stats.calls += len(session.calls)
        if hit:
            stats.hits += 1
            stats.run_time_s += elapsed
        else:
            stats.misses += 1
            stats.trace_time_s += elapsed
            stats.plans.setdefault(key, plan)
        stats.last_plan = stats.plans.get(key, plan)
    return result


def _build_plan(mode: JITMode, session: _Session, root: Any) -> Plan:
    if mode is JITMode.STRUCTURAL:
        fields = structural_nodes(root) if root is not None else []
        nodes = tuple(PlanNode(i, type(op).__name__, path, observed=False) for i, (path, op) in enumerate(fields))
        return Plan("structural", nodes)
    direct = structural_nodes(root, deep=False) if root is not None else []
    paths: dict[int, str] = {}
    for path, op in direct:
        paths.setdefault(id(op), path)
    nodes = [PlanNode(c.index, type(c.operator).__name__, paths.get(id(c.operator)) if mode is JITMode.ENHANCED
                      else None) for c in session.calls]
    if mode is JITMode.ENHANCED:  # the direct sub-operators never called (deeper ones run inside them)
        called = {id(c.operator) for c in session.calls}
        for path, op in direct:
            if id(op) not in called:
                nodes.append(PlanNode(len(nodes), type(op).__name__, path, observed=False))
    return Plan(mode.value, tuple(nodes), tuple(session.edges))  # type: ignore[arg-type]


# -- jit --------------------------------------------------------------------------------

_JIT_ATTR = "__ember_jit__"
_classes: dict[tuple[type, JITMode], type] = {}
_classes_lock = threading.Lock()


def _has_sub_operators(cls_or_op: Any) -> bool:
    return bool(structural_nodes(cls_or_op)) if isinstance(cls_or_op, Operator) else False


def _jit_class(cls: type[Operator], mode: JITMode) -> type[Operator]:
    if _JIT_ATTR in vars(cls):
        return cls
    with _classes_lock:
        cached = _classes.get((cls, mode))
        if cached is not None:
            return cached
        original = cls.forward
        stats = JitStats(mode)

        def forward(self: Operator, *, inputs: Any) -> Any:
            run_stats = stats
            if mode is JITMode.AUTO:  # resolved per instance: its fields decide
                run_stats = _auto_stats(stats, JITMode.ENHANCED if _has_sub_operators(self) else JITMode.TRACE)
            key = (_operator_key(self), _input_structure(inputs))
            return _run(run_stats, key, self, lambda: original(self, inputs=inputs))

        forward.__doc__ = original.__doc__
        namespace = {
            "forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, _JIT_ATTR: stats,
        }
        if not hasattr(cls, "stats"):
            namespace["stats"] = property(lambda self: jit_stats(self))
        jitted = type(cls)(cls.__name__, (cls,), namespace)
        _classes[(cls, mode)] = jitted
        return jitted




def _auto_stats(stats: JitStats, mode: JITMode) -> JitStats:
    """AUTO classes keep one stats object; its mode is the one the first instance resolved."""
    if stats.mode is JITMode.AUTO:
        with stats._lock:
            if stats.mode is JITMode.AUTO:
                stats.mode = mode
    return stats


def _jit_instance(op: Operator, mode: JITMode) -> Operator:
    cls = _jit_class(type(op), mode)
    if cls is type(op):
        return op
    jitted = object.__new__(cls)
    jitted.__dict__.update(op.__dict__)  # same fields and layout: a frozen operator of the jitted class
    return jitted


def _jit_function(fn: Callable[..., T], mode: JITMode) -> Callable[..., T]:
    stats = JitStats(JITMode.TRACE if mode in (JITMode.AUTO, JITMode.ENHANCED) else mode)

    @functools.wraps(fn)
    def jitted(*args: Any, **kwargs: Any) -> T:
        key = (_input_structure(args), _input_structure(kwargs))
        return _run(stats, key, None, lambda: fn(*args, **kwargs))

    jitted.stats = stats  # type: ignore[attr-defined]
    setattr(jitted, _JIT_ATTR, stats)
    return jitted


@overload
def jit(target: T, *, mode: JITMode | str | None = None) -> T: ...
@overload
def jit(target: None = None, *, mode: JITMode | str | None = None) -> Callable[[T], T]: ...
def jit(target: Any = None, *, mode: JITMode | str | None = None) -> Any:
    """Run sub-operator calls concurrently by asynchronous dispatch (see the module docstring).

    ``target`` is an operator class (a jitted subclass is returned), an operator instance
    (the same operator, of the jitted class) or a function (wrapped). Use as ``@jit`` or
    ``@jit(mode=JITMode.ENHANCED)``; ``mode`` may also be a string such as ``"trace"``.
    """
    resolved = _mode(mode)
    if target is None:
        return lambda t: jit(t, mode=resolved)
    if isinstance(target, type) and issubclass(target, Operator):
        return _jit_class(target, resolved)
    if isinstance(target, Operator):
        return _jit_instance(target, resolved)
    if callable(target):
        return _jit_function(target, resolved)
    raise TypeError(f"jit expects an operator class, an operator or a function, got {type(target).__name__}")


def jit_stats(target: Any) -> JitStats:
    """The :class:`JitStats` of a jitted class, operator instance or function."""
    if isinstance(target, Operator):
        target = type(target)
    if isinstance(target, type):
        for klass in target.__mro__:
            if _JIT_ATTR in vars(klass):
                return vars(klass)[_JIT_ATTR]
    stats = getattr(target, _JIT_ATTR, None)
    if isinstance(stats, JitStats):
        return stats
    raise TypeError(f"{target!r} is not jitted")
