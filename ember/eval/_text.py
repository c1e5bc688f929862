"""Text-matching evaluators: exact match, token F1 and regex extraction.

All compare after the same normalisation (lower case, no punctuation, no English
articles, single spaces — the SQuAD convention), so "The Paris." matches "paris". A
reference may list alternatives in ``item.metadata["aliases"]``; for a multiple-choice
item both the letter and the option text count as the reference.
"""

from __future__ import annotations

import collections
import re
import string

from ember.data import DatasetItem
from ember.eval._evaluator import EvaluationResult, Evaluator

__all__ = ["normalize_text", "references", "ExactMatchEvaluator", "TokenF1Evaluator", "RegexEvaluator"]

_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    """``"The  Eiffel-Tower!"`` -> ``"eiffeltower"``: lower case, no punctuation or articles.

    >>> normalize_text("The  Capital is PARIS.")
    'capital is paris'
    """
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def references(item: DatasetItem) -> list[str]:
    """Every string that counts as the right answer for ``item``."""
    refs = [item.answer, item.answer_text, *item.metadata.get("aliases", ())]
    return list(dict.fromkeys(r for r in refs if r))


class ExactMatchEvaluator(Evaluator):
    """Correct when the normalised output equals a reference.

    ``contains=True`` accepts a reference appearing as a whole phrase inside the output
    ("The capital of France is Paris." for "Paris"): right for chatty small models, which
    rarely answer with the bare word.
    """

    def __init__(self, *, normalize: bool = True, contains: bool = False) -> None:
        self.normalize, self.contains = normalize, contains
        self.name = "contains_match" if contains else "exact_match"

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        prep = normalize_text if self.normalize else str.strip
        said = prep(output)
        for ref in map(prep, references(item)):
            if said == ref or (self.contains and ref and f" {ref} " in f" {said} "):
                return EvaluationResult.binary(True, matched=ref)
        return EvaluationResult.binary(False)


def _f1(prediction: str, reference: str) -> float:
    said, ref = prediction.split(), reference.split()
    common = sum((collections.Counter(said) & collections.Counter(ref)).values())
    if not said or not ref:
        return float(said == ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(said), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class TokenF1Evaluator(Evaluator):
    """Word-overlap F1 against the best-matching reference; correct at ``threshold`` or above."""

    name = "token_f1"

    def __init__(self, *, threshold: float = 1.0) -> None:
        self.threshold = threshold

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        said = normalize_text(output)
        best = max((_f1(said, normalize_text(ref)) for ref in references(item)), default=0.0)
        return EvaluationResult(best, best >= self.threshold, {})


class RegexEvaluator(Evaluator):
    """Extracts the answer with ``pattern`` (its ``group``), then compares it like exact match.

    E.g. ``RegexEvaluator(r"Final answer:\\s*(.+)")``. No match scores 0 and records
    ``extracted=None``, so format failures are countable apart from wrong answers.
    """

    name = "regex_match"

    def __init__(self, pattern: str | re.Pattern[str], *, group: int | str = 1, flags: int = re.IGNORECASE) -> None:
        self.pattern = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
        self.group = group

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        found = self.pattern.search(output)
        if found is None:
            return EvaluationResult.binary(False, extracted=None)
        extracted = found.group(self.group)
        said = normalize_text(extracted)
        correct = any(said == normalize_text(ref) for ref in references(item))
        return EvaluationResult.binary(correct, extracted=extracted)
