"""TruthfulQA, multiple-choice task (Lin et al., 2022): questions that invite common misconceptions.

Official format (github.com/sylinrl/TruthfulQA): ``data/mc_task.json``, a JSON array of
``{"question", "mc1_targets": {option: 1|0, ...}, ...}`` with exactly one true option in
``mc1_targets``, always listed first — so options are shuffled, seeded by the item id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ember.data._errors import CorruptDataFileError
from ember.data._formats import iter_json
from ember.data._item import DatasetItem
from ember.data.builders._base import BenchmarkBuilder, shuffle_options

__all__ = ["TruthfulQA"]


class TruthfulQA(BenchmarkBuilder):
    name = "ember_truthfulqa"
    DATASET = "truthfulqa"
    DESCRIPTION = "TruthfulQA MC1: one true option among misconception-based distractors."
    HOW_TO_GET = (
        "clone https://github.com/sylinrl/TruthfulQA into the source directory, so that data/mc_task.json exists"
    )
    TASK = "multiple_choice"
    SPLITS = ("validation",)
    SUBSETS = ("mc1",)
    DEFAULT_SUBSET = "mc1"

    @classmethod
    def files(cls, subset: str, split: str) -> tuple[str, ...]:
        return ("data/mc_task.json",)

    def parse(self, path: Path, subset: str, split: str) -> Iterator[DatasetItem]:
        for position, record in iter_json(path):
            targets = record.get("mc1_targets") if isinstance(record, dict) else None
            if not isinstance(targets, dict) or "question" not in record:
                raise CorruptDataFileError(path, f"record {position} lacks 'question' or an 'mc1_targets' mapping")
            true = [option for option, label in targets.items() if label == 1]
            if len(true) != 1:
                raise CorruptDataFileError(path, f"record {position}: mc1_targets must mark exactly one option 1, found {len(true)}")
            item_id = f"{subset}/{position}"
            options, correct = shuffle_options(true[0], [o for o, label in targets.items() if label != 1], item_id)
            yield DatasetItem.with_options(item_id, record["question"], options, correct)
