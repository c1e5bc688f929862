"""Vote and FilterVote: the two compound systems studied by Chen et al. (2024).

"Are More LLM Calls All You Need?" analyses *Vote* -- sample one model ``num_calls``
times and return the most common answer -- and *Filter-Vote*, which first asks the model
to judge each sampled answer and votes among those it keeps. Their accuracy need not grow
with ``num_calls``; :func:`estimate_num_calls` predicts a good number from a few samples.

Both compose the core operators, so all samples (and all filter checks) are in flight at
once through the models layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember.non._ensembles import UniformEnsemble
from ember.operators import (
    EnsembleInput,
    MostCommon,
    MostCommonOutput,
    Operator,
    Specification,
    Verifier,
    register_operator,
)

if TYPE_CHECKING:
    from ember.models import ModelService

__all__ = ["Vote", "FilterVote"]


class VoteSpecification(Specification[EnsembleInput, MostCommonOutput]):
    input_model = EnsembleInput
    structured_output = MostCommonOutput


@register_operator
class Vote(Operator[EnsembleInput, MostCommonOutput]):
    """``num_calls`` samples of one model, then majority vote (first-seen wins ties)."""

    specification = VoteSpecification()

    def __init__(
        self,
        model_name: str,
        num_calls: int,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        model_service: ModelService | None = None,
    ) -> None:
        self.ensemble = UniformEnsemble(num_calls, model_name, temperature, max_tokens, model_service)
        self.aggregate = MostCommon()

    def forward(self, *, inputs: EnsembleInput) -> MostCommonOutput:
        samples = self.ensemble(inputs=inputs)
        return self.aggregate(inputs=samples)


@register_operator
class FilterVote(Operator[EnsembleInput, MostCommonOutput]):
    """Vote among the samples a verifier accepts; among all samples if it accepts none.

    The verifier defaults to the sampled model at temperature 0. Its checks of the
    ``num_calls`` answers are submitted together, like the samples.
    """

    specification = VoteSpecification()

    def __init__(
        self,
        model_name: str,
        num_calls: int,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        model_service: ModelService | None = None,
        filter_model_name: str | None = None,
    ) -> None:
        self.ensemble = UniformEnsemble(num_calls, model_name, temperature, max_tokens, model_service)
        self.verifier = Verifier(filter_model_name or model_name, 0.0, max_tokens, model_service)
        self.aggregate = MostCommon()

    def forward(self, *, inputs: EnsembleInput) -> MostCommonOutput:
        samples = self.ensemble(inputs=inputs).responses
        checks = [{"query": inputs.query, "candidate_answer": answer} for answer in samples]
        verdicts = self.verifier.lm.generate_all(self.verifier.specification, checks)
        kept = [answer for answer, check in zip(samples, verdicts) if check.verdict]
        return self.aggregate(responses=kept or samples)
