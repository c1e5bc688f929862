"""The typed errors of the graph engine, all derived from :class:`GraphError`.

Every error names the node(s) it is about, so a failure in a large graph points at its
place. Errors raised by a run carry that run's :class:`~ember.xcs.ExecutionTrace` as
``error.trace`` (``None`` for errors raised while the graph is built).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ember._runtime import EmberError

__all__ = [
    "CycleError",
    "DuplicateNodeError",
    "ExecutionOptionsError",
    "FieldConflictError",
    "GraphError",
    "GraphTimeoutError",
    "MissingInputError",
    "MissingNodeError",
    "NodeExecutionError",
]


class GraphError(EmberError):
    """Base of every error of :mod:`ember.xcs` graphs and their runs."""

    #: The run's trace, when the error was raised by ``execute_graph``.
    trace: Any = None


class DuplicateNodeError(GraphError):
    """``add_node`` with an id the graph already has."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id!r} already exists in the graph; pick another node_id")


class MissingNodeError(GraphError):
    """An edge (or a query) names a node the graph does not have."""

    def __init__(self, node_id: str, known: Sequence[str], where: str) -> None:
        from ember._runtime import close_matches, did_you_mean

        self.node_id = node_id
        super().__init__(f"{where}: no node {node_id!r} in the graph.{did_you_mean(close_matches(node_id, known))}")


class CycleError(GraphError):
    """An edge that would close a cycle; ``cycle`` lists its nodes, first == last."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__(f"edge {cycle[0]!r} -> {cycle[1]!r} would close a cycle: {' -> '.join(self.cycle)}")


class FieldConflictError(GraphError):
    """Two predecessors of ``node_id`` write the same input ``field``."""

    def __init__(self, node_id: str, field: str, writers: Sequence[str]) -> None:
        self.node_id, self.field, self.writers = node_id, field, tuple(writers)
        super().__init__(
            f"node {node_id!r}: predecessors {self.writers[0]!r} and {self.writers[1]!r} both write field "
            f"{field!r}; map one of them with add_edge(..., mapping={{{field!r}: 'other_name'}})"
        )


class MissingInputError(GraphError):
    """A node's input model requires fields neither the graph inputs nor its predecessors give."""

    def __init__(self, node_id: str, fields: Sequence[str], available: Sequence[str]) -> None:
        self.node_id, self.fields = node_id, tuple(fields)
        super().__init__(
            f"node {node_id!r} needs input field(s) {list(self.fields)}, which neither the graph inputs nor "
            f"its predecessors provide (available: {sorted(available)})"
        )


class NodeExecutionError(GraphError):
    """A node's operator raised; the original error is ``__cause__``."""

    def __init__(self, node_id: str, cause: BaseException) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id!r} failed: {type(cause).__name__}: {cause}")


class GraphTimeoutError(GraphError):
    """The run took longer than ``ExecutionOptions.timeout``; everything in flight was cancelled."""

    def __init__(self, timeout: float, unfinished: Sequence[str]) -> None:
        self.timeout, self.unfinished = timeout, tuple(unfinished)
        super().__init__(f"graph run timed out after {timeout} s; unfinished nodes: {list(self.unfinished)}")


class ExecutionOptionsError(GraphError):
    """An invalid execution option (unknown name, scheduler or value)."""
