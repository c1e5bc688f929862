"""Validators: functions ``DatasetItem -> list of problems`` (empty when the item is fine).

They run as items stream by, after sampling and transforms. A dataset either raises
:class:`InvalidItemError` on the first bad item or skips and counts bad items; silently
scoring a question with no answer as wrong is the failure they exist to prevent.
"""

from __future__ import annotations

from collections.abc import Callable

from ember.data._item import DatasetItem

__all__ = ["Validator", "RequireFields", "ValidChoices", "default_validators"]

Validator = Callable[[DatasetItem], list[str]]


class RequireFields:
    """Each named field must be non-empty (whitespace counts as empty)."""

    def __init__(self, *fields: str) -> None:
        unknown = set(fields) - {"id", "query", "answer", "choices"}
        if unknown:
            raise ValueError(f"RequireFields: unknown field(s) {sorted(unknown)}")
        self.fields = fields or ("query", "answer")

    def __call__(self, item: DatasetItem) -> list[str]:
        problems = []
        for name in self.fields:
            value = getattr(item, name)
            if not (value.strip() if isinstance(value, str) else value):
                problems.append(f"{name} is empty")
        return problems

    def __repr__(self) -> str:
        return f"RequireFields{self.fields!r}"


class ValidChoices:
    """For multiple-choice items: enough non-empty choices, and the answer is one of their labels."""

    def __init__(self, min_choices: int = 2) -> None:
        self.min_choices = min_choices

    def __call__(self, item: DatasetItem) -> list[str]:
        if not item.choices:
            return []
        problems = []
        if len(item.choices) < self.min_choices:
            problems.append(f"{len(item.choices)} choice(s), need at least {self.min_choices}")
        empty = [label for label, text in item.choices.items() if not text.strip()]
        if empty:
            problems.append(f"empty choice(s) {', '.join(empty)}")
        if item.answer not in item.choices:
            problems.append(f"answer {item.answer!r} is not one of the choice labels {', '.join(item.choices)}")
        return problems

    def __repr__(self) -> str:
        return f"ValidChoices(min_choices={self.min_choices})"


def default_validators() -> tuple[Validator, ...]:
    """What every loaded benchmark must satisfy: a question, an answer, coherent choices."""
    return (RequireFields("query", "answer"), ValidChoices())
