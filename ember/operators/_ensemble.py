"""Ensemble: the same prompt to N model members, all in flight at once.

Members are submitted to the shared I/O loop together, inside one
:class:`~ember._runtime.TaskGroup`, so an ensemble of 8 has 8 requests in flight (within
the per-model budget) instead of calling members one after another, and one member's
failure cancels the others' requests instead of waiting for them. Each member gets its own ``sample_index``, so repeated
samples of one model are distinct samples, not cache hits of the first. Awaited
(``acall``), the members are awaited together on the caller's loop, with no thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from ember._runtime import TaskGroup
from ember.operators._gather import gather
from ember.operators._lm import LMModule
from ember.operators._model import EmberModel
from ember.operators._operator import Operator
from ember.operators._registry import register_operator
from ember.operators._specification import Specification

__all__ = ["Ensemble", "EnsembleInput", "EnsembleOutput"]


class EnsembleInput(EmberModel):
    query: str


class EnsembleOutput(EmberModel):
    responses: list[str]


class EnsembleSpecification(Specification[EnsembleInput, EnsembleOutput]):
    input_model = EnsembleInput
    structured_output = EnsembleOutput
    prompt_template = "{query}"


@register_operator
class Ensemble(Operator[EnsembleInput, EnsembleOutput]):
    """Ask every member the query; ``responses[i]`` is member ``i``'s answer."""

    specification = EnsembleSpecification()
    lm_modules: Sequence[LMModule]

    def __post_init__(self) -> None:
        self.lm_modules = tuple(self.lm_modules)
        if not self.lm_modules or not all(isinstance(lm, LMModule) for lm in self.lm_modules):
            raise ValueError("Ensemble needs a non-empty sequence of LMModule members")

    def forward(self, *, inputs: EnsembleInput) -> EnsembleOutput:
        prompt = self.specification.render_prompt(inputs)
        with TaskGroup():
            futures = [lm.submit(prompt, sample_index=i) for i, lm in enumerate(self.lm_modules)]
        return EnsembleOutput(responses=[future.result().text for future in futures])

    async def aforward(self, *, inputs: EnsembleInput) -> EnsembleOutput:
        prompt = self.specification.render_prompt(inputs)
        answers = await gather(lm.ainvoke(prompt, sample_index=i) for i, lm in enumerate(self.lm_modules))
        return EnsembleOutput(responses=[answer.text for answer in answers])
