"""Vote and FilterVote: the two compound systems studied by Chen et al. (2024).

"Are More LLM Calls All You Need?" analyses *Vote* -- sample one model ``num_calls``
times and return the most common answer -- and *Filter-Vote*, which first asks a model to
check each sampled answer and votes among those it accepts. Their accuracy need not grow
with ``num_calls``; :func:`estimate_num_calls` predicts a good number from a few samples.

Both are compositions of operators called through ``__call__`` (sample, filter, vote), so
an execution engine can trace them; within a step, all samples and all checks are
submitted together through the models layer. Awaited (``acall``), the same steps are
awaited through the parts' ``acall``, with no thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember.non._ensembles import UniformEnsemble
from ember.operators import (
    CandidatesInput,
    EnsembleInput,
    EnsembleOutput,
    LMOperator,
    MostCommon,
    MostCommonOutput,
    Operator,
    Specification,
    Verifier,
    VerifierOutput,
    register_operator,
)

if TYPE_CHECKING:
    from ember.models import ModelService

__all__ = ["Filter", "FilterVote", "Vote"]


class VoteSpecification(Specification[EnsembleInput, MostCommonOutput]):
    input_model = EnsembleInput
    structured_output = MostCommonOutput


class FilterSpecification(Specification[CandidatesInput, EnsembleOutput]):
    input_model = CandidatesInput
    structured_output = EnsembleOutput


@register_operator
class Filter(LMOperator[CandidatesInput, EnsembleOutput]):
    """Keep the ``responses`` a verifier accepts as answers to ``query`` (all, if it accepts none).

    Uses :class:`~ember.operators.Verifier`'s prompt; the checks are submitted at once.
    """

    specification = FilterSpecification()

    def forward(self, *, inputs: CandidatesInput) -> EnsembleOutput:
        return _kept(inputs, self.lm.generate_all(Verifier.specification, _checks(inputs)))

    async def aforward(self, *, inputs: CandidatesInput) -> EnsembleOutput:
        return _kept(inputs, await self.lm.agenerate_all(Verifier.specification, _checks(inputs)))


def _checks(inputs: CandidatesInput) -> list[dict[str, str]]:
    return [{"query": inputs.query, "candidate_answer": answer} for answer in inputs.responses]


def _kept(inputs: CandidatesInput, verdicts: list[VerifierOutput]) -> EnsembleOutput:
    kept = [answer for answer, check in zip(inputs.responses, verdicts) if check.verdict]
    return EnsembleOutput(responses=kept or inputs.responses)


@register_operator
class Vote(Operator[EnsembleInput, MostCommonOutput]):
    """``num_calls`` samples of one model, then majority vote (first-seen wins ties)."""

    specification = VoteSpecification()
    ensemble: UniformEnsemble
    aggregate: MostCommon

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

    async def aforward(self, *, inputs: EnsembleInput) -> MostCommonOutput:
        samples = await self.ensemble.acall(inputs=inputs)
        return await self.aggregate.acall(inputs=samples)


@register_operator
class FilterVote(Operator[EnsembleInput, MostCommonOutput]):
    """Vote among the samples a :class:`Filter` keeps.

    The filter defaults to the sampled model at temperature 0.
    """

    specification = VoteSpecification()
    ensemble: UniformEnsemble
    filter: Filter
    aggregate: MostCommon

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
        self.filter = Filter(filter_model_name or model_name, 0.0, max_tokens, model_service)
        self.aggregate = MostCommon()

    def forward(self, *, inputs: EnsembleInput) -> MostCommonOutput:
        samples = self.ensemble(inputs=inputs)
        kept = self.filter(query=inputs.query, responses=samples.responses)
        return self.aggregate(inputs=kept)

    async def aforward(self, *, inputs: EnsembleInput) -> MostCommonOutput:
        samples = await self.ensemble.acall(inputs=inputs)
        kept = await self.filter.acall(query=inputs.query, responses=samples.responses)
        return await self.aggregate.acall(inputs=kept)
