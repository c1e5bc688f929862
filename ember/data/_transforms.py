"""Transformers: pure functions ``DatasetItem -> DatasetItem`` applied as items stream by.

Any callable with that signature works with :meth:`Dataset.map`; the classes here are the
ones benchmarks need often enough to name. Each is deterministic per item id, so a
transformed dataset is the same on every run and a resumed evaluation sees identical items.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from ember.data._item import DatasetItem, choice_labels

__all__ = ["Transform", "ShuffleChoices", "NormalizeWhitespace"]

Transform = Callable[[DatasetItem], DatasetItem]


class ShuffleChoices:
    """Reorders each item's choices and relabels the answer.

    Why: several benchmarks ship the correct option in a fixed position, and small models
    favour some letters; shuffling (seeded by ``seed`` and the item id) measures the model
    rather than its position bias.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, item: DatasetItem) -> DatasetItem:
        if not item.choices:
            return item
        texts = list(item.choices.values())
        correct = list(item.choices).index(item.answer) if item.answer in item.choices else None
        order = list(range(len(texts)))
        random.Random(f"{self.seed}:{item.id}").shuffle(order)
        labels = choice_labels(len(texts))
        answer = labels[order.index(correct)] if correct is not None else item.answer
        return item.replace(choices={label: texts[i] for label, i in zip(labels, order)}, answer=answer)

    def __repr__(self) -> str:
        return f"ShuffleChoices(seed={self.seed})"


class NormalizeWhitespace:
    """Collapses runs of whitespace in the query and choices (CSV exports often carry stray newlines)."""

    _space = re.compile(r"\s+")

    def __call__(self, item: DatasetItem) -> DatasetItem:
        squash = lambda text: self._space.sub(" ", text).strip()  # noqa: E731
        return item.replace(query=squash(item.query), choices={k: squash(v) for k, v in item.choices.items()})

    def __repr__(self) -> str:
        return "NormalizeWhitespace()"
