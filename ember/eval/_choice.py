"""Multiple choice: find which option an output picked, by letter or by text.

Small models answer "B", "(B)", "The answer is B.", "B) Paris" or just "Paris". The
extractor tries, in order: an explicit "answer is X" / "answer: X"; a letter at the very
start; a single parenthesised or bare standalone letter; the one option whose text the
output contains. An output naming two options by text is ambiguous and scores wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ember.data import DatasetItem
from ember.eval._evaluator import EvaluationResult, Evaluator
from ember.eval._text import normalize_text

__all__ = ["MultipleChoiceEvaluator", "extract_choice"]


def extract_choice(output: str, choices: Mapping[str, str]) -> str | None:
    """The label of the option ``output`` chose, or ``None`` when it cannot tell."""
    labels = "".join(re.escape(label) for label in choices)
    if not labels:
        return None
    letter = f"([{labels}])"
    patterns = (
        rf"answer\s*(?:is|:)?\s*(?:option\s*)?[\(\[]?{letter}\b",
        rf"^\s*[\(\[]?{letter}(?:[\)\].:,]|\s|$)",
        rf"[\(\[]{letter}[\)\]]",
    )
    for pattern in patterns:
        found = re.search(pattern, output, flags=re.IGNORECASE if pattern is patterns[0] else 0)
        if found:
            return found.group(1).upper()
    standalone = set(re.findall(rf"(?<![\w'’]){letter}(?![\w'’])", output))
    if len(standalone) == 1:
        return standalone.pop()
    said = f" {normalize_text(output)} "
    named = [label for label, text in choices.items() if normalize_text(text) and f" {normalize_text(text)} " in said]
    if len(named) > 1:  # "New York" inside "New York City": keep the longest
        longest = max(named, key=lambda label: len(choices[label]))
        named = [longest] if all(normalize_text(choices[label]) in normalize_text(choices[longest]) for label in named) else named
    return named[0] if len(named) == 1 else None


class MultipleChoiceEvaluator(Evaluator):
    """Correct when the chosen option (see :func:`extract_choice`) is ``item.answer``."""

    name = "accuracy"

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        if not item.choices:
            raise ValueError(f"item {item.id!r} has no choices; MultipleChoiceEvaluator needs a multiple-choice dataset")
        chosen = extract_choice(output, item.choices)
        return EvaluationResult.binary(chosen == item.answer, extracted=chosen)
