"""Plans: what ``jit`` knows about an operator's sub-operator calls, for stats, caching and pictures.

A :class:`Plan` is a list of :class:`PlanNode` (one per sub-operator call, or per sub-operator
field) and the edges between them. It never drives execution (``jit`` always runs by
asynchronous dispatch, see :mod:`ember.xcs._jit`); it says what ran, what overlapped, and
can be exported as an :class:`~ember.xcs._graph.XCSGraph` for ``to_mermaid()`` and friends.

- ``trace`` plans come from running ``forward`` once: a node per call, in issue order, with
  ``data`` edges (a call's lazy result was passed, unread, into another call's inputs) and
  ``read`` edges (``forward`` read a call's value before issuing the next call, which may
  therefore depend on it: a conservative ordering edge).
- ``structural`` plans come from the operator pytree without running it: a node per
  sub-operator field (its path, e.g. ``refiner`` or ``branches[1]``), no edges.
- ``enhanced`` plans are trace plans whose nodes carry the field path of the operator that
  was called, plus the structural nodes that were never called (``observed=False``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

__all__ = ["Plan", "PlanNode", "structural_nodes"]

EdgeKind = Literal["data", "read"]


@dataclasses.dataclass(frozen=True)
class PlanNode:
    index: int
    operator: str  # the operator's class name
    path: str | None = None  # the field path in the jitted operator, if it is one of its fields
    observed: bool = True  # False: a structural node that no traced call reached

    @property
    def label(self) -> str:
        return f"{self.path}: {self.operator}" if self.path else self.operator


@dataclasses.dataclass(frozen=True)
class Plan:
    mode: str
    nodes: tuple[PlanNode, ...] = ()
    edges: tuple[tuple[int, int, EdgeKind], ...] = ()

    @property
    def calls(self) -> int:
        """Observed sub-operator calls."""
        return sum(node.observed for node in self.nodes)

    def waves(self) -> list[list[int]]:
        """Observed nodes grouped by dependency depth: each wave can run at once."""
        depth: dict[int, int] = {}
        preds: dict[int, list[int]] = {n.index: [] for n in self.nodes if n.observed}
        for a, b, _ in self.edges:
            preds.setdefault(b, []).append(a)
        for node in self.nodes:  # nodes are in issue order, so predecessors come first
            if node.observed:
                depth[node.index] = 1 + max((depth.get(p, -1) for p in preds[node.index]), default=-1)
        waves: list[list[int]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
        for index, d in depth.items():
            waves[d].append(index)
        return waves

    def to_graph(self) -> Any:
        """The plan as an :class:`~ember.xcs._graph.XCSGraph` of labelled placeholder nodes.

        Node ids are the field paths (or ``<Operator>_<index>``); each node holds a
        placeholder named after the operator type. The operators are not kept (a plan is
        keyed by structure, not by instance), so this graph is for pictures and
        inspection, not for ``execute_graph``.
        """
        from ember.xcs._graph import XCSGraph

        graph = XCSGraph()
        ids = {}
        for node in self.nodes:
            node_id = node.path or f"{node.operator}_{node.index}"
            if node_id in graph:
                node_id = f"{node_id}_{node.index}"
            placeholder = type(node.operator, (_Placeholder,), {"__module__": __name__})(node.label)
            ids[node.index] = graph.add_node(operator=placeholder, node_id=node_id)
        for a, b, _ in self.edges:
            graph.add_edge(from_id=ids[a], to_id=ids[b])
        return graph

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of the plan (dashed: a read edge; grey: never called)."""
        lines = ["flowchart TD"]
        for node in self.nodes:
            lines.append(f'    n{node.index}["{node.label}"]')
            if not node.observed:
                lines.append(f"    style n{node.index} stroke-dasharray: 4 4,color:#888")
        for a, b, kind in self.edges:
            lines.append(f"    n{a} {'-->' if kind == 'data' else '-.->'} n{b}")
        return "\n".join(lines)


class _Placeholder:
    """A plan node in an exported graph: callable, but only names the operator it stands for."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, *, inputs: Any = None) -> Any:
        raise RuntimeError(f"{self.label} is a plan placeholder; record a runnable graph with autograph()")

    def __repr__(self) -> str:
        return self.label


def structural_nodes(root: Any, *, deep: bool = True) -> list[tuple[str, Any]]:
    """``(path, operator)`` for every sub-operator reachable through ``root``'s fields
    (``deep=False``: only those not inside another sub-operator)."""
    from ember.operators import Operator

    found: list[tuple[str, Any]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Operator):
            if path:
                found.append((path, value))
                if not deep:
                    return
            for name, child in vars(value).items():
                if not name.startswith("__"):
                    walk(child, f"{path}.{name}" if path else name)
        elif isinstance(value, (list, tuple)):
            for i, child in enumerate(value):
                walk(child, f"{path}[{i}]")
        elif isinstance(value, dict):
            for key, child in value.items():
                walk(child, f"{path}[{key!r}]")

    walk(root, "")
    return found
