"""MostCommon: majority vote over normalized answers.

Answers are compared after :func:`normalize_answer` (case, spacing and surrounding
punctuation do not split a vote: "Paris." and "paris" agree). Blank answers do not vote.
Tie rule: among answers with the most votes, the one that appears first in
``responses`` wins. With exchangeable samples that is an unbiased choice, and it is
deterministic. The winning answer is returned as first written, not normalized.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ember.operators._model import EmberModel
from ember.operators._operator import Operator
from ember.operators._registry import register_operator
from ember.operators._specification import Specification

__all__ = ["MostCommon", "MostCommonInput", "MostCommonOutput", "majority_vote", "normalize_answer"]

_STRIP = " \t\n.!?,;:'\"`*"


def normalize_answer(text: str) -> str:
    """The form answers are compared in: casefolded, spaces collapsed, ends trimmed.

    >>> normalize_answer("  The  answer is PARIS. ")
    'the answer is paris'
    """
    return " ".join(text.casefold().split()).strip(_STRIP)


def majority_vote(responses: Sequence[str]) -> str:
    """The most common answer (first-seen wins ties); ``""`` when every answer is blank.

    >>> majority_vote(["Paris.", "Lyon", "paris", "Lyon", ""])   # a tie: "Paris." came first
    'Paris.'
    >>> majority_vote(["", "  "])
    ''
    """
    keys = [normalize_answer(r) for r in responses]
    counts = Counter(k for k in keys if k)
    if not counts:
        return ""
    top = max(counts.values())
    winner = next(i for i, k in enumerate(keys) if counts.get(k) == top)
    return responses[winner].strip()


class MostCommonInput(EmberModel):
    responses: list[str]


class MostCommonOutput(EmberModel):
    final_answer: str


class MostCommonSpecification(Specification[MostCommonInput, MostCommonOutput]):
    input_model = MostCommonInput
    structured_output = MostCommonOutput


@register_operator
class MostCommon(Operator[MostCommonInput, MostCommonOutput]):
    """Majority vote over ``responses``; no model call.

    >>> MostCommon()(responses=["42", "41", " 42. "]).final_answer
    '42'
    """

    specification = MostCommonSpecification()

    def forward(self, *, inputs: MostCommonInput) -> MostCommonOutput:
        return MostCommonOutput(final_answer=majority_vote(inputs.responses))

    async def aforward(self, *, inputs: MostCommonInput) -> MostCommonOutput:
        return self.forward(inputs=inputs)  # a few microseconds of counting: a thread would cost more
