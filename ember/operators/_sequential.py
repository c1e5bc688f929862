"""Sequential: stages in order, each seeing the original inputs and every earlier output.

A plain chain hands stage ``k`` only stage ``k-1``'s output, so in ``[ensemble, judge]``
the judge would lose the query. Here the inputs are carried forward: stage ``k`` receives
the original inputs merged with the outputs of stages ``0..k-1`` (later keys win), and
each stage's input model picks the fields it needs. The result is the last stage's output.

Offline, with Ember's loopback server (:mod:`ember.testing`) in place of the provider:

>>> import os
>>> from ember.testing import LoopbackServer
>>> server = LoopbackServer().start()
>>> os.environ.update(server.environ())
>>> from ember.api import non
>>> pipeline = Sequential([non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o"), non.MostCommon()])
>>> pipeline(inputs={"query": "What is 17 * 23?"}).final_answer
'391'
>>> server.close()

A ``non.JudgeSynthesis(model_name=...)`` in place of ``MostCommon`` receives both the
ensemble's ``responses`` and the original ``query``. Awaited (``acall``), each stage is
awaited through its own ``acall``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ember.operators._errors import InvalidOutputError
from ember.operators._operator import Operator
from ember.operators._registry import register_operator

__all__ = ["Sequential", "as_fields"]


def as_fields(value: Any, where: str) -> dict[str, Any]:
    """A model's or mapping's fields as a shallow dict (nested values kept as they are)."""
    if isinstance(value, (BaseModel, Mapping)):
        return dict(value)
    raise InvalidOutputError(
        f"{where} returned {type(value).__name__}; a model or a mapping is needed to carry it forward"
    )


@register_operator
class Sequential(Operator[Any, Any]):
    """Run ``operators`` in order, carrying the original inputs forward."""

    operators: Sequence[Operator]

    def __post_init__(self) -> None:
        self.operators = tuple(self.operators)
        if not self.operators or not all(isinstance(op, Operator) for op in self.operators):
            raise ValueError("Sequential needs a non-empty sequence of operators")

    def forward(self, *, inputs: Any) -> Any:
        carried = as_fields(inputs, "Sequential's caller")
        output: Any = None
        for k, op in enumerate(self.operators):
            carried = self._carry(carried, k, output)
            output = op(inputs=carried)
        return output

    async def aforward(self, *, inputs: Any) -> Any:
        carried = as_fields(inputs, "Sequential's caller")
        output: Any = None
        for k, op in enumerate(self.operators):
            carried = self._carry(carried, k, output)
            output = await op.acall(inputs=carried)
        return output

    def _carry(self, carried: dict[str, Any], k: int, output: Any) -> dict[str, Any]:
        """Stage ``k``'s inputs: ``carried`` with stage ``k - 1``'s ``output`` merged in."""
        if k:
            carried |= as_fields(output, f"stage {k - 1} ({type(self.operators[k - 1]).__name__})")
        return carried
