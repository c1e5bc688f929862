"""SelectBest: a model picks one candidate, returned verbatim.

Unlike :class:`JudgeSynthesis`, the answer is always one of the candidates, so nothing
the judge writes can leak into it. The model names the candidate by number; a number out
of range is a validation error like malformed JSON, so it gets the one repair attempt.
"""

from __future__ import annotations

from pydantic import ValidationInfo, field_validator

from ember.operators._lm import LMOperator
from ember.operators._model import EmberModel
from ember.operators._registry import register_operator
from ember.operators._specification import Specification
from ember.operators._synthesis import CandidatesInput

__all__ = ["SelectBest", "SelectBestOutput"]


class _Choice(EmberModel):
    reasoning: str
    best_candidate: int

    @field_validator("best_candidate")
    @classmethod
    def _in_range(cls, value: int, info: ValidationInfo) -> int:
        inputs = (info.context or {}).get("inputs")
        if inputs is not None and not 1 <= value <= len(inputs.responses):
            raise ValueError(f"must be a candidate number from 1 to {len(inputs.responses)}")
        return value


class _ChoiceSpecification(Specification[CandidatesInput, _Choice]):
    input_model = CandidatesInput
    structured_output = _Choice
    prompt_template = (
        "Several candidate answers to a question follow. Decide which one candidate answers it "
        "best.\n\nQuestion:\n{query}\n\n{candidates}\n\n"
        "Give your reasoning, then the number of the best candidate."
    )


class SelectBestOutput(EmberModel):
    final_answer: str
    index: int  # 0-based position of the chosen candidate in ``responses``
    reasoning: str


class SelectBestSpecification(Specification[CandidatesInput, SelectBestOutput]):
    input_model = CandidatesInput
    structured_output = SelectBestOutput


@register_operator
class SelectBest(LMOperator[CandidatesInput, SelectBestOutput]):
    """One model chooses the best candidate; ``final_answer`` is that candidate's text."""

    specification = SelectBestSpecification()
    _choice = _ChoiceSpecification()

    def forward(self, *, inputs: CandidatesInput) -> SelectBestOutput:
        return _chosen(inputs, self.lm.generate(self._choice, inputs))

    async def aforward(self, *, inputs: CandidatesInput) -> SelectBestOutput:
        return _chosen(inputs, await self.lm.agenerate(self._choice, inputs))


def _chosen(inputs: CandidatesInput, choice: _Choice) -> SelectBestOutput:
    index = choice.best_candidate - 1
    return SelectBestOutput(final_answer=inputs.responses[index], index=index, reasoning=choice.reasoning)
