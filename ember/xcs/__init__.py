"""The execution engine: graphs of operators, schedulers, jit and autograph; and the
transforms (vmap, pmap, mesh_sharded, compose) that map operators over batches on JAX.

See ``docs/xcs.md`` and ``docs/transforms.md``.
"""

from ember.xcs._autograph import RecordedCall, autograph
from ember.xcs._callback import PromptTable, generate_callback, llm_callback
from ember.xcs._device_mesh import DeviceMesh
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
from ember.xcs._transform_errors import (
    BatchAxisError,
    CallbackInputError,
    CallbackOutputError,
    NonDifferentiableError,
    NotTraceableError,
    PromptIdError,
    TransformError,
    UnknownDeviceError,
)
from ember.xcs._transforms import PartitionSpec, compose, mesh_sharded, pmap, vmap

__all__ = [
    "BatchAxisError",
    "CallbackInputError",
    "CallbackOutputError",
    "CycleError",
    "DeviceMesh",
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
    "NonDifferentiableError",
    "NotTraceableError",
    "ParallelScheduler",
    "PartitionSpec",
    "PromptIdError",
    "PromptTable",
    "RecordedCall",
    "Scheduler",
    "SequentialScheduler",
    "TransformError",
    "UnknownDeviceError",
    "WaveScheduler",
    "XCSGraph",
    "XCSNode",
    "autograph",
    "compose",
    "current_execution_options",
    "execute_graph",
    "execution_options",
    "generate_callback",
    "jit",
    "jit_stats",
    "llm_callback",
    "mesh_sharded",
    "pmap",
    "vmap",
]
