"""Operators that read a query and candidate answers: JudgeSynthesis and Synthesis.

Both see the original query next to every candidate -- a judge that sees only the
candidates cannot tell which of them answers the question. In a :class:`Sequential`
after an ensemble, the query is carried forward to them automatically. Both await their
one call natively when awaited (``acall``).
"""

from __future__ import annotations

from ember.operators._lm import LMOperator
from ember.operators._model import EmberModel
from ember.operators._registry import register_operator
from ember.operators._specification import Specification

__all__ = ["CandidatesInput", "JudgeSynthesis", "JudgeSynthesisOutput", "Synthesis", "SynthesisOutput"]


class CandidatesInput(EmberModel):
    """A query and the candidate answers to it."""

    query: str
    responses: list[str]

    @property
    def candidates(self) -> str:
        """The candidates numbered from 1, one block each, for prompts."""
        return "\n\n".join(f"Candidate {i}:\n{text.strip()}" for i, text in enumerate(self.responses, 1))


class JudgeSynthesisOutput(EmberModel):
    reasoning: str  # first, so the model reasons before it commits to an answer
    final_answer: str


class SynthesisOutput(EmberModel):
    final_answer: str


class JudgeSynthesisSpecification(Specification[CandidatesInput, JudgeSynthesisOutput]):
    input_model = CandidatesInput
    structured_output = JudgeSynthesisOutput
    prompt_template = (
        "You are a judge. Several candidate answers to a question follow. Weigh them: note where "
        "they agree, find their errors, and decide what the correct answer is (it may combine "
        "candidates or correct all of them).\n\n"
        "Question:\n{query}\n\n{candidates}\n\n"
        "Give your reasoning, then the final answer alone."
    )


class SynthesisSpecification(Specification[CandidatesInput, SynthesisOutput]):
    input_model = CandidatesInput
    structured_output = SynthesisOutput
    prompt_template = (
        "Several candidate answers to a question follow. Write the single best answer to the "
        "question, combining what the candidates get right.\n\n"
        "Question:\n{query}\n\n{candidates}\n\nAnswer:"
    )


@register_operator
class JudgeSynthesis(LMOperator[CandidatesInput, JudgeSynthesisOutput]):
    """One model judges the candidates and returns a final answer with its reasoning."""

    specification = JudgeSynthesisSpecification()

    def forward(self, *, inputs: CandidatesInput) -> JudgeSynthesisOutput:
        return self.lm.generate(self.specification, inputs)

    async def aforward(self, *, inputs: CandidatesInput) -> JudgeSynthesisOutput:
        return await self.lm.agenerate(self.specification, inputs)


@register_operator
class Synthesis(LMOperator[CandidatesInput, SynthesisOutput]):
    """One model writes a combined answer as free text (no JSON asked of it)."""

    specification = SynthesisSpecification()

    def forward(self, *, inputs: CandidatesInput) -> SynthesisOutput:
        return SynthesisOutput(final_answer=self.lm(self.specification.render_prompt(inputs)).strip())

    async def aforward(self, *, inputs: CandidatesInput) -> SynthesisOutput:
        return SynthesisOutput(final_answer=(await self.lm.acall(self.specification.render_prompt(inputs))).strip())
