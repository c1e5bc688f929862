"""XCSGraph: a directed acyclic graph of operators, validated as it is built.

Each node holds an operator; an edge ``a -> b`` runs ``a`` before ``b`` and hands ``a``'s
output fields to ``b``. What a node receives is the graph inputs merged with its
predecessors' output fields (a predecessor's field wins over a graph input of the same
name), so a judge after an ensemble sees both the ``query`` and the ``responses``. An
edge's ``mapping`` (``{output field: input field}``) renames fields and passes only those.
Two predecessors that write the same field are an error (:class:`FieldConflictError`).

>>> from ember.xcs import XCSGraph
>>> g = XCSGraph()
>>> a = g.add_node(operator=len, node_id="a")
>>> b = g.add_node(operator=len, node_id="b")
>>> g.add_edge(from_id="a", to_id="b")
>>> g.add_edge(from_id="b", to_id="a")
Traceback (most recent call last):
...
ember.xcs._errors.CycleError: edge 'b' -> 'a' would close a cycle: b -> a -> b
>>> g.topological_order(), g.sources, g.sinks
(['a', 'b'], ['a'], ['b'])
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ember.xcs._errors import CycleError, DuplicateNodeError, GraphError, MissingNodeError

__all__ = ["XCSGraph", "XCSNode"]


@dataclasses.dataclass(frozen=True, slots=True)
class XCSNode:
    """One node: its id and the operator (any callable taking ``inputs=``) it runs."""

    node_id: str
    operator: Any


class XCSGraph:
    """A DAG of operators; see the module docstring."""

    def __init__(self) -> None:
        self._nodes: dict[str, XCSNode] = {}
        self._succ: dict[str, dict[str, Mapping[str, str] | None]] = {}
        self._pred: dict[str, dict[str, Mapping[str, str] | None]] = {}
        self._counter = itertools.count()

    # -- building ---------------------------------------------------------------------
    def add_node(self, *, operator: Any, node_id: str | None = None) -> str:
        """Add a node and return its id (``<OperatorType>_<n>`` when ``node_id`` is None)."""
        if not callable(operator):
            raise GraphError(f"node {node_id!r}: operator must be callable, got {type(operator).__name__}")
        if node_id is None:
            base = type(operator).__name__
            node_id = f"{base}_{next(self._counter)}"
            while node_id in self._nodes:
                node_id = f"{base}_{next(self._counter)}"
        elif not isinstance(node_id, str) or not node_id:
            raise GraphError(f"node_id must be a non-empty string, got {node_id!r}")
        if node_id in self._nodes:
            raise DuplicateNodeError(node_id)
        self._nodes[node_id] = XCSNode(node_id, operator)
        self._succ[node_id], self._pred[node_id] = {}, {}
        return node_id

    def add_edge(self, *, from_id: str, to_id: str, mapping: Mapping[str, str] | None = None) -> None:
        """Run ``from_id`` before ``to_id`` and pass its output fields (renamed by ``mapping``)."""
        for node_id in (from_id, to_id):
            if node_id not in self._nodes:
                raise MissingNodeError(node_id, self._nodes, f"add_edge({from_id!r} -> {to_id!r})")
        if to_id in self._succ[from_id]:
            raise GraphError(f"edge {from_id!r} -> {to_id!r} already exists")
        path = self._path(to_id, from_id)
        if path is not None:
            raise CycleError([from_id, *path])
        frozen = None if mapping is None else MappingProxyType(dict(mapping))
        self._succ[from_id][to_id] = frozen
        self._pred[to_id][from_id] = frozen

    def _path(self, start: str, goal: str) -> list[str] | None:
        """A path start -> ... -> goal along edges, or None."""
        parents: dict[str, str | None] = {start: None}
        stack = [start]
        while stack:
            node = stack.pop()
            if node == goal:
                path = [node]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])  # type: ignore[arg-type]
                return path[::-1]
            for nxt in self._succ[node]:
                if nxt not in parents:
                    parents[nxt] = node
                    stack.append(nxt)
        return None

    # -- queries ----------------------------------------------------------------------
    @property
    def nodes(self) -> Mapping[str, XCSNode]:
        """Every node by id, in insertion order (read-only)."""
        return MappingProxyType(self._nodes)

    def _check(self, node_id: str) -> None:
        if node_id not in self._nodes:
            raise MissingNodeError(node_id, self._nodes, "query")

    def predecessors(self, node_id: str) -> list[str]:
        self._check(node_id)
        return list(self._pred[node_id])

    def successors(self, node_id: str) -> list[str]:
        self._check(node_id)
        return list(self._succ[node_id])

    def edge_mapping(self, from_id: str, to_id: str) -> Mapping[str, str] | None:
        """The field mapping of an edge (None: every field passes unchanged)."""
        self._check(from_id)
        if to_id not in self._succ[from_id]:
            raise GraphError(f"no edge {from_id!r} -> {to_id!r}")
        return self._succ[from_id][to_id]

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(a, b) for a, succ in self._succ.items() for b in succ]

    @property
    def sources(self) -> list[str]:
        return [n for n, pred in self._pred.items() if not pred]

    @property
    def sinks(self) -> list[str]:
        return [n for n, succ in self._succ.items() if not succ]

    def topological_order(self) -> list[str]:
        """Every node after its predecessors; ties keep insertion order."""
        return [n for level in self.levels() for n in level]

    def levels(self) -> list[list[str]]:
        """Waves: level k holds the nodes whose longest path from a source has k edges."""
        depth: dict[str, int] = {}
        remaining = {n: len(p) for n, p in self._pred.items()}
        ready = [n for n, k in remaining.items() if k == 0]
        for n in ready:
            depth[n] = 0
        i = 0
        while i < len(ready):  # Kahn's algorithm, recording each node's longest-path depth
            node = ready[i]
            i += 1
            for nxt in self._succ[node]:
                depth[nxt] = max(depth.get(nxt, 0), depth[node] + 1)
                remaining[nxt] -= 1
                if remaining[nxt] == 0:
                    ready.append(nxt)
        levels: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for n in self._nodes:
            levels[depth[n]].append(n)
        return levels

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __repr__(self) -> str:
        return f"XCSGraph({len(self._nodes)} nodes, {len(self.edges)} edges)"

    # -- pictures ---------------------------------------------------------------------
    def to_mermaid(self) -> str:
        """A Mermaid flowchart (paste into a Markdown ```mermaid block)."""
        ids = {n: f"n{i}" for i, n in enumerate(self._nodes)}
        lines = ["flowchart TD"]
        for n, node in self._nodes.items():
            lines.append(f'    {ids[n]}["{_label(n)}<br/>{_label(type(node.operator).__name__)}"]')
        for a, b in self.edges:
            mapping = self._succ[a][b]
            arrow = f" -->|{_label(_mapping_text(mapping))}| " if mapping else " --> "
            lines.append(f"    {ids[a]}{arrow}{ids[b]}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """A Graphviz DOT digraph (render with ``dot -Tsvg``)."""
        lines = ["digraph xcs {", "    rankdir=TB;", "    node [shape=box];"]
        for n, node in self._nodes.items():
            lines.append(f'    "{_dot(n)}" [label="{_dot(n)}\\n{_dot(type(node.operator).__name__)}"];')
        for a, b in self.edges:
            mapping = self._succ[a][b]
            attrs = f' [label="{_dot(_mapping_text(mapping))}"]' if mapping else ""
            lines.append(f'    "{_dot(a)}" -> "{_dot(b)}"{attrs};')
        lines.append("}")
        return "\n".join(lines)


def _mapping_text(mapping: Mapping[str, str] | None) -> str:
    return ", ".join(f"{k}→{v}" for k, v in (mapping or {}).items())


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


def _dot(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
