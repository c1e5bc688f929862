"""Verifier: a model checks one candidate answer and revises it if wrong.

Verification is often easier than generation (Davis et al., 2024), so a verifier after a
judge can catch errors the generators share. The candidate may be passed as
``candidate_answer`` or, as a judge's output is named, ``final_answer``, so
``Sequential([ensemble, judge, verifier])`` needs no glue.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field

from ember.operators._lm import LMOperator
from ember.operators._model import EmberModel
from ember.operators._registry import register_operator
from ember.operators._specification import Specification

__all__ = ["Verifier", "VerifierInput", "VerifierOutput"]


class VerifierInput(EmberModel):
    query: str
    candidate_answer: str = Field(validation_alias=AliasChoices("candidate_answer", "final_answer"))


class VerifierOutput(EmberModel):
    verdict: bool  # true when the candidate is correct
    explanation: str
    revised_answer: str


class VerifierSpecification(Specification[VerifierInput, VerifierOutput]):
    input_model = VerifierInput
    structured_output = VerifierOutput
    prompt_template = (
        "Check whether the candidate answer to the question is correct.\n\n"
        "Question:\n{query}\n\nCandidate answer:\n{candidate_answer}\n\n"
        "Set verdict to true if it is correct and false otherwise, explain why, and give a "
        "revised answer (the candidate itself if it is correct)."
    )


@register_operator
class Verifier(LMOperator[VerifierInput, VerifierOutput]):
    """One model's verdict on a candidate answer, with an explanation and a revision."""

    specification = VerifierSpecification()

    def forward(self, *, inputs: VerifierInput) -> VerifierOutput:
        return self.lm.generate(self.specification, inputs)

    async def aforward(self, *, inputs: VerifierInput) -> VerifierOutput:
        return await self.lm.agenerate(self.specification, inputs)
