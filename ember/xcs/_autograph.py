"""``autograph()``: record the operator calls of a block of ordinary code as an :class:`XCSGraph`.

>>> from ember.operators import Operator
>>> class Shout(Operator):
...     def forward(self, *, inputs):
...         return {"text": inputs.text.upper() + "!"}
>>> shout = Shout()
>>> with autograph() as graph:
...     once = shout(inputs={"text": "hi"})
...     twice = shout(inputs=once)
>>> twice["text"], list(graph.nodes), graph.edges
('HI!!', ['Shout_0', 'Shout_1'], [('Shout_0', 'Shout_1')])

Every top-level operator call in the block (through the operator call hook) runs eagerly,
so the code behaves exactly as without the block, and becomes a node. A node's operator is
a small recorded call that knows the operator and the inputs it was called with:

- **recorded inputs** (a literal dict or model, such as ``{"query": "Example"}``) are kept
  on the node, so ``execute_graph(graph=graph)`` with no inputs reruns the same thing; with
  ``inputs=`` the graph inputs are merged over each source's recorded inputs (they win);
- **a result passed whole** (``op2(inputs=intermediate)``) adds an edge from its call; the
  node then receives what the graph engine hands it: the graph inputs merged with the
  predecessors' output fields (see :class:`~ember.xcs._graph.XCSGraph`);
- **a field of a result inside a dict** (``op2(inputs={"text": first.answer, "n": 3})``,
  recognised by identity) adds an edge with the mapping ``{answer: text}``; on a rerun that
  key takes the predecessor's new field value and the other keys keep their recorded values.

Not captured (they are recorded as constants, the values of this run): values computed
from a result (``first.answer.upper()``), a whole result nested inside a dict, and control
flow (only the branch taken is recorded). Calls made on other threads inside the block are
run but not recorded.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from ember.operators import intercept_calls
from ember.xcs._graph import XCSGraph

__all__ = ["RecordedCall", "autograph"]


class RecordedCall:
    """A graph node's operator: one recorded call of ``operator`` (see the module docstring)."""

    def __init__(self, operator: Any, inputs: Any, kind: str, linked: tuple[str, ...] = ()) -> None:
        self.operator, self.recorded_inputs, self.kind, self.linked = operator, inputs, kind, linked

    def __call__(self, *, inputs: Mapping[str, Any] | None = None) -> Any:
        received = dict(inputs or {})
        recorded = self.recorded_inputs
        if self.kind == "whole":
            return self.operator(inputs=received)
        if not received:
            return self.operator(inputs=recorded)  # an exact rerun: the very inputs of the recording
        fields = dict(recorded) if isinstance(recorded, (Mapping, BaseModel)) else {}
        if self.kind == "linked":  # the predecessors' mapped fields (and graph inputs) replace recorded keys
            return self.operator(inputs={k: received.get(k, v) for k, v in fields.items()})
        if not fields:
            return self.operator(inputs=recorded)
        return self.operator(inputs={**fields, **received})

    def __repr__(self) -> str:
        return f"{type(self.operator).__name__}(recorded {self.kind} call)"


_named: dict[type, type] = {}


def _node_type(op_type: type) -> type:
    """A RecordedCall subclass named after the operator type, so pictures show the operator."""
    cls = _named.get(op_type)
    if cls is None:
        cls = _named[op_type] = type(op_type.__name__, (RecordedCall,), {"__module__": __name__})
    return cls


class _Recorder:
    def __init__(self, graph: XCSGraph) -> None:
        self.graph = graph
        self.thread = threading.get_ident()
        self.results: dict[int, tuple[str, Any]] = {}  # id(result) -> (node, result): kept alive
        self.fields: dict[int, tuple[str, str, Any]] = {}  # id(field value) -> (node, field, value)
        self._counter = itertools.count()

    def _node_of(self, value: Any) -> str | None:
        hit = self.results.get(id(value))
        return hit[0] if hit is not None and hit[1] is value else None

    def _field_of(self, value: Any) -> tuple[str, str] | None:
        if not isinstance(value, str) or len(value) < 2:  # tiny strings may be shared by the interpreter
            return None
        hit = self.fields.get(id(value))
        return (hit[0], hit[1]) if hit is not None and hit[2] is value else None

    def hook(self, op: Any, inputs: Any, call: Callable[[Any], Any]) -> Any:
        if threading.get_ident() != self.thread:
            return call(inputs)
        edges: dict[str, dict[str, str] | None] = {}
        whole = self._node_of(inputs)
        if whole is not None:
            kind, linked = "whole", ()
            edges[whole] = None
        else:
            kind, linked_keys = "source", []
            if isinstance(inputs, Mapping):
                for key, value in inputs.items():
                    found = self._field_of(value)
                    if found is not None and key not in linked_keys:
                        pred, field = found
                        mapping = edges.setdefault(pred, {})
                        if mapping is not None and field not in mapping:
                            mapping[field] = str(key)
                            linked_keys.append(str(key))
            if edges:
                kind = "linked"
            linked = tuple(linked_keys)
        node_id = f"{type(op).__name__}_{next(self._counter)}"
        while node_id in self.graph:
            node_id = f"{type(op).__name__}_{next(self._counter)}"
        self.graph.add_node(operator=_node_type(type(op))(op, inputs, kind, linked), node_id=node_id)
        for pred, mapping in edges.items():
            self.graph.add_edge(from_id=pred, to_id=node_id, mapping=mapping)
        result = call(inputs)
        self.results[id(result)] = (node_id, result)
        if isinstance(result, (Mapping, BaseModel)):
            for field, value in dict(result).items():
                if isinstance(value, str):
                    self.fields[id(value)] = (node_id, str(field), value)
        return result


@contextlib.contextmanager
def autograph() -> Iterator[XCSGraph]:
    """Record the operator calls made in the block as a graph (see the module docstring)."""
    graph = XCSGraph()
    with intercept_calls(_Recorder(graph).hook):
        yield graph
