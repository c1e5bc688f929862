"""Parallel: several sub-networks answer the same inputs; their answers are pooled.

This is how sub-networks are ensembled: ``Parallel([net_a, net_b])`` followed by a judge
gives the judge both networks' answers. A branch contributes its ``final_answer`` or, if
it has none, its ``responses``. Branches run at once in a :class:`~ember._runtime.TaskGroup`
(on the runtime's shared worker threads, each in a copy of the caller's context, so
context-local settings reach every branch); the model calls themselves share the models
layer's one budget, so nesting does not multiply the number of requests in flight. A
failing branch cancels its siblings' calls. Awaited (``acall``), the branches' ``acall``
are awaited together on the caller's loop instead, with the same cancellation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ember._runtime import TaskGroup
from ember.operators._ensemble import EnsembleOutput
from ember.operators._errors import InvalidOutputError
from ember.operators._gather import gather
from ember.operators._operator import Operator
from ember.operators._registry import register_operator
from ember.operators._sequential import as_fields

__all__ = ["Parallel"]


def _answers(output: Any, where: str) -> list[str]:
    fields = as_fields(output, where)
    final = fields.get("final_answer")
    if isinstance(final, str):
        return [final]
    responses = fields.get("responses")
    if isinstance(responses, list) and all(isinstance(r, str) for r in responses):
        return responses
    raise InvalidOutputError(f"{where} returned neither a final_answer nor responses: {output!r:.120}")


@register_operator
class Parallel(Operator[Any, EnsembleOutput]):
    """Run every branch on the same inputs; ``responses`` pools their answers in order."""

    branches: Sequence[Operator]

    def __post_init__(self) -> None:
        self.branches = tuple(self.branches)
        if not self.branches or not all(isinstance(op, Operator) for op in self.branches):
            raise ValueError("Parallel needs a non-empty sequence of operators")

    def forward(self, *, inputs: Any) -> EnsembleOutput:
        with TaskGroup() as group:
            outputs = [group.spawn(branch.__call__, inputs=inputs) for branch in self.branches]
        return self._pool([output.result() for output in outputs])

    async def aforward(self, *, inputs: Any) -> EnsembleOutput:
        return self._pool(await gather(branch.acall(inputs=inputs) for branch in self.branches))

    def _pool(self, outputs: Sequence[Any]) -> EnsembleOutput:
        responses = []
        for k, (branch, output) in enumerate(zip(self.branches, outputs)):
            responses += _answers(output, f"branch {k} ({type(branch).__name__})")
        return EnsembleOutput(responses=responses)
