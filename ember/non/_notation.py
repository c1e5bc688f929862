"""Compact NON notation: a network of networks written as strings and lists, built to run.

>>> from ember.api import non
>>> pipeline = non.build_graph(["3:E:openai:gpt-4o:0.7", "1:J:anthropic:claude-3-5-sonnet:0.0"])
>>> type(pipeline).__name__, [type(op).__name__ for op in pipeline.operators]
('Sequential', ['UniformEnsemble', 'JudgeSynthesis'])

``pipeline(inputs={"query": ...})`` runs it: the three samples are in flight at once and
the judge sees the query and all three answers.

Grammar::

    graph    := node | pipeline
    pipeline := "[" item ("," item)* "]"          a Python list (or tuple), non-empty
    item     := node | pipeline                   a nested pipeline is a sub-network
    node     := COUNT ":" TYPE [":" MODEL ":" TEMP] | "$" NAME
    COUNT    := [0-9]+                            1..1024; must be 1 unless TYPE is E
    TYPE     := "E" | "J" | "S" | "B" | "V" | "MC"
    MODEL    := model id, may contain ":"         e.g. openai:gpt-4o; no spaces
    TEMP     := [0-9]+ ("." [0-9]*)? | "." [0-9]+  0 <= TEMP <= 2; required with a MODEL
    NAME     := a key of ``components``

Types: ``E`` ensemble of COUNT samples (-> responses); ``J`` JudgeSynthesis (-> final_answer,
reasoning); ``S`` Synthesis (-> final_answer); ``B`` SelectBest (-> final_answer);
``V`` Verifier (-> verdict, explanation, revised_answer); ``MC`` MostCommon, no model
(-> final_answer). Every type but ``MC`` needs MODEL and TEMP; MODEL is everything between
TYPE and the last ``:``.

Meaning:

- A pipeline runs its items in order, as :class:`~ember.operators.Sequential`: each stage
  sees the original inputs (the query) and every earlier stage's output.
- Adjacent candidate producers -- ``E`` nodes and sub-networks (nested pipelines) -- form
  one :class:`~ember.operators.Parallel` group: they run at once on the same inputs and
  their answers (a sub-network's ``final_answer``, an ensemble's ``responses``) are pooled
  as ``responses`` for the next stage. A lone ``E`` is just that ensemble.
- ``"$name"`` stands for ``components["name"]`` (a node or a pipeline), as if written in
  its place; components may refer to each other, but not in a cycle.

So ``[["3:E:m1:0.7", "1:J:m1:0"], ["3:E:m2:0.7", "1:J:m2:0"], "1:J:m3:0"]`` judges the
verdicts of two judged ensembles, and ``["$net", "$net", "1:V:m:0"]`` with
``components={"net": [...]}`` reuses one definition twice.

Any malformed notation raises :class:`NotationError`, which names where the bad node is
(``graph[1][0]``) and points at the offending token.

On a command line, notation is one string: :func:`parse_notation` reads a list literal
(``'["5:E:m:0.7", "1:MC"]'``) or comma-separated nodes (``"5:E:m:0.7,1:MC"``), and
:func:`is_notation` tells notation from a plain model id:

>>> parse_notation("5:E:openai:gpt-4o:0.7,1:MC")
['5:E:openai:gpt-4o:0.7', '1:MC']
>>> is_notation("5:E:openai:gpt-4o:0.7"), is_notation("openai:gpt-4o")
(True, False)
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ember._runtime import EmberError, close_matches
from ember.non._ensembles import UniformEnsemble
from ember.operators import JudgeSynthesis, MostCommon, Operator, Parallel, SelectBest, Sequential, Synthesis, Verifier

if TYPE_CHECKING:
    from ember.models import ModelService

__all__ = ["NODE_TYPES", "NodeType", "NotationError", "build_graph", "is_notation", "parse_notation"]


@dataclasses.dataclass(frozen=True)
class NodeType:
    """One TYPE of the notation: the operator it builds and what it produces."""

    code: str
    operator: type[Operator]
    produces: str
    #: Whether the node is ``COUNT:TYPE:MODEL:TEMP`` (else just ``1:TYPE``).
    needs_model: bool = True
    #: Whether COUNT may exceed 1 (an ensemble's number of samples).
    counted: bool = False


#: The one table of node types: the builder, the grammar's checks and :func:`is_notation` read it.
NODE_TYPES: dict[str, NodeType] = {
    t.code: t
    for t in (
        NodeType("E", UniformEnsemble, "responses", counted=True),
        NodeType("J", JudgeSynthesis, "final_answer, reasoning"),
        NodeType("S", Synthesis, "final_answer"),
        NodeType("B", SelectBest, "final_answer"),
        NodeType("V", Verifier, "verdict, explanation, revised_answer"),
        NodeType("MC", MostCommon, "final_answer", needs_model=False),
    )
}
MAX_COUNT = 1024
MAX_DEPTH = 32
_TYPES = sorted(NODE_TYPES)
#: ``COUNT:`` then anything: notation (no provider is named by digits), so a bad TYPE gets the builder's error.
_NODE_START = re.compile(r"^[0-9]+:")
_COUNT = re.compile(r"[0-9]+")
_TEMP = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")

Notation = str | Sequence[Any]


def is_notation(text: str) -> bool:
    """Whether ``text`` is compact notation (a node, nodes joined by commas, or a list literal).

    Anything that starts ``COUNT:`` is notation, even with an unknown TYPE (no model id
    starts with digits), so ``1:X:openai:gpt-4o:0.5`` is reported as a bad node, not as
    an unknown provider ``1``:

    >>> is_notation("1:X:openai:gpt-4o:0.5"), is_notation("3"), is_notation("openai:gpt-4o")
    (True, False, False)
    """
    text = text.strip()
    return text.startswith("[") or bool(_NODE_START.match(text))


def _column(line: str, byte_offset: int) -> int:
    """The character column of a UTF-8 byte offset (``ast`` counts bytes)."""
    return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))


def _literal(text: str) -> Notation:
    """A list literal of strings (and lists), or a :class:`NotationError` with a caret at the fault."""
    lines = text.splitlines() or [text]

    def fail(reason: str, line: int, column: int, width: int = 1) -> NotationError:
        line = min(max(line, 1), len(lines))
        where = "notation" if len(lines) == 1 else f"notation line {line}"
        return NotationError(reason, where=where, node=lines[line - 1], column=max(column, 0), width=width)

    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        column = (error.offset or 1) - 1  # SyntaxError counts characters from 1
        hint = " (quote every node: [\"3:E:MODEL:0.7\", \"1:MC\"])" if error.msg == "invalid syntax" else ""
        raise fail(f"not a valid list literal: {error.msg}{hint}", error.lineno or 1, column) from None
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes; absurd nesting
        reason = "nested too deeply" if not isinstance(error, ValueError) else str(error)
        raise NotationError(f"not a valid list literal: {reason}", where="notation") from None
    for node in ast.walk(tree.body):
        if isinstance(node, (ast.List, ast.Tuple, ast.Constant, ast.Load)):
            continue
        line = lines[min(node.lineno, len(lines)) - 1]
        start = _column(line, node.col_offset)
        end = _column(line, node.end_col_offset) if node.end_lineno == node.lineno and node.end_col_offset else start + 1
        raise fail(
            f"not a valid list literal: only quoted node strings and [lists] may appear, found {type(node).__name__}",
            node.lineno, start, end - start,
        )  # fmt: skip
    try:
        return ast.literal_eval(tree)
    except (ValueError, TypeError, RecursionError, MemoryError) as error:  # pragma: no cover - the walk above
        raise NotationError(f"not a valid list literal: {error}", where="notation") from None


def parse_notation(text: str) -> Notation:
    """The notation object :func:`build_graph` takes, from its one-string form.

    A malformed list literal raises :class:`NotationError` pointing at the fault:

    >>> parse_notation('["3:E:m:0.7" "1:MC"')
    Traceback (most recent call last):
    ...
    ember.non._notation.NotationError: notation: not a valid list literal: '[' was never closed
        ["3:E:m:0.7" "1:MC"
        ^
    """
    text = text.strip()
    if text.startswith("["):
        return _literal(text)
    nodes = [node.strip() for node in text.split(",")]
    return nodes[0] if len(nodes) == 1 else nodes


class NotationError(EmberError, ValueError):
    """Malformed compact notation; ``where``, ``node`` and ``column`` locate the bad token."""

    def __init__(self, reason: str, *, where: str, node: str | None = None, column: int | None = None, width: int = 1):
        self.reason, self.where, self.node, self.column = reason, where, node, column
        message = f"{where}: {reason}"
        if node is not None and column is not None:
            message += f"\n    {node}\n    {' ' * column}^{'~' * (max(width, 1) - 1)}"
        super().__init__(message)


def build_graph(
    graph: Notation,
    *,
    components: Mapping[str, Notation] | None = None,
    model_service: ModelService | None = None,
) -> Operator:
    """Build the runnable operator that ``graph`` describes (grammar in the module docstring).

    ``components`` names sub-graphs for ``$name`` references; ``model_service`` is passed to
    every model-backed operator (default: the app context's service at call time).
    """
    if components is None:
        components = {}
    if not isinstance(components, Mapping) or not all(isinstance(k, str) for k in components):
        raise NotationError("components must be a mapping from names to notation", where="components")
    return _Builder(components, model_service).item(graph, "graph", 0)[0]


class _Builder:
    def __init__(self, components: Mapping[str, Notation], service: ModelService | None) -> None:
        self.components, self.service = components, service
        self.expanding: list[str] = []

    def item(self, item: Any, where: str, depth: int) -> tuple[Operator, bool]:
        """The operator for one item, and whether it is a candidate producer."""
        if depth > MAX_DEPTH:
            raise NotationError(f"nested deeper than {MAX_DEPTH} levels", where=where)
        if isinstance(item, str):
            if item.startswith("$"):
                return self.reference(item, where, depth)
            return self.node(item, where)
        if isinstance(item, (list, tuple)):
            return self.pipeline(item, where, depth), True
        raise NotationError(f"expected a node string or a list, got {type(item).__name__}", where=where)

    def pipeline(self, items: Sequence[Any], where: str, depth: int) -> Operator:
        if not items:
            raise NotationError("empty pipeline", where=where)
        stages: list[Operator] = []
        group: list[tuple[Operator, bool]] = []  # (operator, is a sub-network)

        def close_group() -> None:
            if len(group) == 1 and not group[0][1]:
                stages.append(group[0][0])
            elif group:
                stages.append(Parallel([op for op, _ in group]))
            group.clear()

        for k, item in enumerate(items):
            op, produces = self.item(item, f"{where}[{k}]", depth + 1)
            if produces:
                group.append((op, not isinstance(op, UniformEnsemble)))
            else:
                close_group()
                stages.append(op)
        close_group()
        return stages[0] if len(stages) == 1 else Sequential(stages)

    def reference(self, text: str, where: str, depth: int) -> tuple[Operator, bool]:
        name = text[1:]
        if name not in self.components:
            close = close_matches(name, self.components)
            hint = f"; did you mean {', '.join('$' + c for c in close)}?" if close else ""
            known = f" (components: {', '.join(sorted(self.components))})" if self.components and not close else ""
            raise NotationError(
                f"unknown reference ${name}{hint}{known}", where=where, node=text, column=0, width=len(text)
            )
        if name in self.expanding:
            cycle = " -> ".join(f"${n}" for n in [*self.expanding[self.expanding.index(name) :], name])
            raise NotationError(f"cyclic reference {cycle}", where=where, node=text, column=0, width=len(text))
        self.expanding.append(name)
        try:
            return self.item(self.components[name], f"{where} -> ${name}", depth + 1)
        finally:
            self.expanding.pop()

    def node(self, text: str, where: str) -> tuple[Operator, bool]:
        fields, column = text.split(":"), [0]
        for field in fields[:-1]:
            column.append(column[-1] + len(field) + 1)

        def fail(reason: str, k: int, width: int | None = None) -> NotationError:
            k = min(k, len(fields))
            at = column[k] if k < len(fields) else len(text)
            size = width if width is not None else (len(fields[k]) if k < len(fields) else 1)
            return NotationError(reason, where=where, node=text, column=at, width=size)

        if not _COUNT.fullmatch(fields[0]):
            raise fail(f"COUNT must be a positive integer, got {fields[0]!r} (form: COUNT:TYPE:MODEL:TEMP)", 0)
        count = int(fields[0])
        if not 1 <= count <= MAX_COUNT:
            raise fail(f"COUNT must be between 1 and {MAX_COUNT}, got {count}", 0)
        if len(fields) < 2:
            raise fail("missing TYPE after COUNT", 1)
        kind = fields[1]
        node_type = NODE_TYPES.get(kind)
        if node_type is None:
            raise fail(f"unknown TYPE {kind!r}; known types: {', '.join(_TYPES)}", 1)
        if not node_type.counted and count != 1:
            counted = ", ".join(t.code for t in NODE_TYPES.values() if t.counted)
            raise fail(f"COUNT must be 1 for type {kind} (only {counted} takes a count)", 0)
        if not node_type.needs_model:
            if len(fields) > 2:
                raise fail(f"{kind} takes no MODEL or TEMP", 2, width=len(text) - column[2])
            return node_type.operator(), False
        if len(fields) < 4:
            raise fail(f"type {kind} needs MODEL and TEMP (form: {count}:{kind}:MODEL:TEMP)", len(fields))
        model = ":".join(fields[2:-1])
        bad = next((c for c in model if c.isspace() or not c.isprintable()), None)
        if bad is not None or any(not part for part in fields[2:-1]):
            problem = f"character {bad!r}" if bad is not None else "an empty part"
            raise fail(f"MODEL {model!r} has {problem}", 2, width=len(model))
        temp = fields[-1]
        if not _TEMP.fullmatch(temp) or float(temp) > 2:
            raise fail(
                f"TEMP must be a number from 0 to 2, got {temp!r} (the last field is the temperature)", len(fields) - 1
            )
        settings = {"model_name": model, "temperature": float(temp), "model_service": self.service}
        if node_type.counted:
            return node_type.operator(num_units=count, **settings), True
        return node_type.operator(**settings), False
