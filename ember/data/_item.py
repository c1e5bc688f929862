"""One evaluation example, the unit every loader produces and every evaluator reads.

Benchmarks differ in shape (free answer, lettered choices, numeric answer); a single
frozen record with an explicit ``choices`` mapping keeps evaluators independent of where
an item came from. ``answer`` is always text: the correct letter for multiple choice, the
reference answer otherwise.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DatasetItem", "choice_labels"]


def choice_labels(n: int) -> tuple[str, ...]:
    """The letters that label ``n`` options: ``A``, ``B``, ...

    >>> choice_labels(3)
    ('A', 'B', 'C')
    """
    if n > len(string.ascii_uppercase):
        raise ValueError(f"at most 26 choices are supported, got {n}")
    return tuple(string.ascii_uppercase[:n])


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetItem:
    """A question, its reference answer, optional lettered choices and free metadata.

    ``id`` is stable across runs (it keys the results journal, so a resumed run knows
    what is done). ``choices`` maps a label to its text, in display order.
    """

    id: str
    query: str
    answer: str = ""
    choices: Mapping[str, str] = dataclasses.field(default_factory=dict)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def with_options(cls, id: str, query: str, options: Sequence[str], correct: int, **metadata: Any) -> DatasetItem:
        """A multiple-choice item from option texts and the index of the right one.

        >>> item = DatasetItem.with_options("q1", "Which is a prime?", ["4", "7", "9"], correct=1)
        >>> item.answer, item.answer_text
        ('B', '7')
        >>> print(item.prompt)
        Which is a prime?
        A. 4
        B. 7
        C. 9
        """
        labels = choice_labels(len(options))
        return cls(id=id, query=query, answer=labels[correct], choices=dict(zip(labels, options)), metadata=metadata)

    @property
    def answer_text(self) -> str:
        """The correct option's text for multiple choice, else the answer itself."""
        return self.choices.get(self.answer, self.answer)

    @property
    def prompt(self) -> str:
        """The question as a system sees it: the query, then one ``A. text`` line per choice."""
        if not self.choices:
            return self.query
        return self.query + "\n" + "\n".join(f"{label}. {text}" for label, text in self.choices.items())

    def replace(self, **changes: Any) -> DatasetItem:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "query": self.query, "answer": self.answer, "choices": dict(self.choices), "metadata": dict(self.metadata)}
