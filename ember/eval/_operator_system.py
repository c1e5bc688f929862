"""NON operators as evaluated systems.

Each item awaits ``operator.acall``. The built-in operators await their model calls
natively, so on the I/O loop (where the pipeline runs items) an ensemble + judge item
costs no thread and no crossing between loops; an operator with only a synchronous
``forward`` runs it on a worker thread (see :meth:`ember.operators.Operator.aforward`).

Cost needs no wiring here: the pipeline runs each item inside a usage scope
(:class:`ember._runtime.UsageScope`) that every model call reports to, however the
operator was built and whatever service its parts were given.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ember.eval._systems import SystemFailure, SystemOutput

if TYPE_CHECKING:
    from ember.models import ModelService

__all__ = ["OperatorSystem", "is_operator"]

_ANSWER_FIELDS = ("final_answer", "revised_answer", "answer", "text")


def is_operator(value: Any) -> bool:
    """Whether ``value`` is an Ember operator (without importing the operators, and so JAX, to find out)."""
    operators = sys.modules.get("ember.operators")
    return operators is not None and isinstance(value, operators.Operator)


def _answer(output: Any) -> str:
    """The answer in an operator's output: a string, or a model or mapping with an answer field."""
    if isinstance(output, str):
        return output
    field_of = output.get if isinstance(output, Mapping) else lambda name: getattr(output, name, None)
    for field in _ANSWER_FIELDS:
        value = field_of(field)
        if isinstance(value, str):
            return value
    responses = field_of("responses")
    if isinstance(responses, list) and responses:
        return str(responses[0])
    raise TypeError(f"operator output has no answer field ({', '.join(_ANSWER_FIELDS)}) or responses: {output!r:.120}")


class OperatorSystem:
    """Runs ``operator(inputs={"query": prompt})`` per item; the answer is its ``final_answer``."""

    def __init__(self, operator: Any, *, name: str | None = None, spec: str | None = None) -> None:
        self.operator = operator
        self.name = name or type(operator).__name__
        self.spec = spec or f"operator:{operator!r}"

    @classmethod
    def from_notation(cls, notation: str, *, name: str | None = None, service: ModelService | None = None) -> OperatorSystem:
        """Build compact notation (see :func:`ember.non.build_graph`)."""
        from ember.non import build_graph, parse_notation

        operator = build_graph(parse_notation(notation), model_service=service)
        return cls(operator, name=name or notation, spec=f"non:{notation}")

    async def arun(self, prompt: str) -> SystemOutput:
        from ember.operators import InvalidOutputError

        try:
            return SystemOutput(_answer(await self.operator.acall(inputs={"query": prompt})))
        except InvalidOutputError as error:  # a model's output was unusable: this item failed
            raise SystemFailure(str(error)) from error

    def __repr__(self) -> str:
        return f"OperatorSystem({self.name!r})"
