"""The execution engine: graphs of operators, schedulers, jit and autograph.

See ``docs/xcs.md``.
"""

from ember.xcs._autograph import RecordedCall, autograph
from ember.xcs._errors import (
    CycleError,
    DuplicateNodeError,
    ExecutionOptionsError,
    FieldConflictError,
    GraphError,
    GraphTimeoutError,
    MissingInputError,
    MissingNodeError,
    NodeExecutionError,
)
from ember.xcs._execute import execute_graph
from ember.xcs._graph import XCSGraph, XCSNode
from ember.xcs._jit import JITMode, JitStats, jit, jit_stats
from ember.xcs._options import ExecutionOptions, current_execution_options, execution_options
from ember.xcs._schedulers import ParallelScheduler, Scheduler, SequentialScheduler, WaveScheduler
from ember.xcs._trace import ExecutionTrace, NodeTrace

__all__ = [
    "CycleError",
    "DuplicateNodeError",
    "ExecutionOptions",
    "ExecutionOptionsError",
    "ExecutionTrace",
    "FieldConflictError",
    "GraphError",
    "GraphTimeoutError",
    "JITMode",
    "JitStats",
    "MissingInputError",
    "MissingNodeError",
    "NodeExecutionError",
    "NodeTrace",
    "ParallelScheduler",
    "RecordedCall",
    "Scheduler",
    "SequentialScheduler",
    "WaveScheduler",
    "XCSGraph",
    "XCSNode",
    "autograph",
    "current_execution_options",
    "execute_graph",
    "execution_options",
    "jit",
    "jit_stats",
]
