"""Numeric answers within a tolerance (GSM8K, AIME, arithmetic).

Which number in a worked solution is the answer? In order of trust: a ``\\boxed{...}``,
a GSM8K-style ``#### 42``, the number after "answer is" / "answer:", else the last
number in the text. Thousands separators, signs, decimals and simple fractions parse.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from ember.data import DatasetItem
from ember.eval._evaluator import EvaluationResult, Evaluator

__all__ = ["NumericEvaluator", "extract_number", "parse_number"]

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+"
_CUES = (
    re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}"),
    re.compile(r"####\s*(" + _NUMBER + r")"),
    re.compile(r"answer\s*(?:is|=|:)?\s*(?:\*\*)?\s*(" + _NUMBER + r")", re.IGNORECASE),
)
_ANY = re.compile(_NUMBER)


def parse_number(text: str) -> float | None:
    """``"1,234.5"`` -> 1234.5, ``"3/4"`` -> 0.75, ``"$12"`` -> 12.0; ``None`` if not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    try:
        value = float(Fraction(cleaned)) if "/" in cleaned else float(cleaned)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def extract_number(output: str) -> float | None:
    """The number ``output`` gives as its answer (see the module docstring), or ``None``."""
    for cue in _CUES:
        found = cue.findall(output)
        if found:
            return parse_number(found[-1])
    numbers = _ANY.findall(output)
    return parse_number(numbers[-1]) if numbers else None


class NumericEvaluator(Evaluator):
    """Correct when the extracted number is within ``tolerance`` of the reference.

    ``relative=True`` scales the tolerance by the reference's magnitude.
    """

    name = "numeric_match"

    def __init__(self, *, tolerance: float = 1e-6, relative: bool = False) -> None:
        self.tolerance, self.relative = tolerance, relative

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        reference = parse_number(item.answer)
        if reference is None:
            raise ValueError(f"item {item.id!r}: reference answer {item.answer!r} is not a number")
        said = extract_number(output)
        if said is None:
            return EvaluationResult.binary(False, extracted=None)
        allowed = self.tolerance * max(abs(reference), 1e-12) if self.relative else self.tolerance
        return EvaluationResult.binary(abs(said - reference) <= allowed, extracted=said)
