"""GraphPlan: an immutable snapshot of an :class:`XCSGraph`, in the shape schedulers need.

``compile_graph`` reads the graph once (order, levels, predecessors with their field
mappings, each node's required input fields) and checks, before anything runs, the field
conflicts it can see from the operators' declared output models. Conflicts it cannot see
statically (operators without a ``structured_output``) are checked when the node's inputs
are assembled, by :meth:`GraphPlan.node_inputs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ember.operators._sequential import as_fields
from ember.xcs._errors import FieldConflictError, MissingInputError
from ember.xcs._graph import XCSGraph

__all__ = ["GraphPlan", "compile_graph"]

Edge = tuple[str, Mapping[str, str] | None]


@dataclasses.dataclass(frozen=True, slots=True)
class GraphPlan:
    order: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    operators: Mapping[str, Any]
    preds: Mapping[str, tuple[Edge, ...]]
    succs: Mapping[str, tuple[str, ...]]
    sinks: tuple[str, ...]
    required: Mapping[str, tuple[str, ...]]

    @property
    def is_chain(self) -> bool:
        """True when no two nodes could ever run at once (one node per level, one sink)."""
        return all(len(level) == 1 for level in self.levels)

    def node_inputs(self, node_id: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
        """The graph inputs merged with the predecessors' output fields; see ``XCSGraph``."""
        preds = self.preds[node_id]
        merged = dict(inputs)
        if len(preds) == 1:  # the common case: no conflict possible
            pred, mapping = preds[0]
            fields = as_fields(outputs[pred], f"node {pred!r}")
            merged.update(fields if mapping is None else {new: fields[old] for old, new in mapping.items() if old in fields})
        elif preds:
            writer: dict[str, str] = {}
            for pred, mapping in preds:
                fields = as_fields(outputs[pred], f"node {pred!r}")
                if mapping is not None:
                    fields = {new: fields[old] for old, new in mapping.items() if old in fields}
                for name, value in fields.items():
                    if name in writer:
                        raise FieldConflictError(node_id, name, (writer[name], pred))
                    writer[name] = pred
                    merged[name] = value
        missing = [name for name in self.required[node_id] if name not in merged]
        if missing:
            raise MissingInputError(node_id, missing, merged)
        return merged


def _spec(operator: Any) -> Any:
    return getattr(operator, "specification", None)


def _required(operator: Any) -> tuple[str, ...]:
    model = getattr(_spec(operator), "input_model", None)
    fields = getattr(model, "model_fields", None) or {}
    return tuple(name for name, info in fields.items() if info.is_required())


def _declared_outputs(operator: Any) -> set[str] | None:
    model = getattr(_spec(operator), "structured_output", None)
    fields = getattr(model, "model_fields", None)
    return None if fields is None else set(fields)


def compile_graph(graph: XCSGraph) -> GraphPlan:
    """Snapshot ``graph`` and check the field conflicts visible from declared output models."""
    levels = tuple(tuple(level) for level in graph.levels())
    operators = {n: node.operator for n, node in graph.nodes.items()}
    preds = {n: tuple((p, graph.edge_mapping(p, n)) for p in graph.predecessors(n)) for n in operators}
    for node_id, edges in preds.items():
        writer: dict[str, str] = {}
        for pred, mapping in edges:
            declared = _declared_outputs(operators[pred])
            if declared is None:
                continue
            names = declared if mapping is None else {new for old, new in mapping.items() if old in declared}
            for name in sorted(names):
                if name in writer:
                    raise FieldConflictError(node_id, name, (writer[name], pred))
                writer[name] = pred
    return GraphPlan(
        order=tuple(n for level in levels for n in level),
        levels=levels,
        operators=operators,
        preds=preds,
        succs={n: tuple(graph.successors(n)) for n in operators},
        sinks=tuple(graph.sinks),
        required={n: _required(op) for n, op in operators.items()},
    )
