"""GPQA (Rein et al., 2023): graduate-level, "Google-proof" science questions.

Official format (github.com/idavidrein/gpqa, ``dataset.zip``): ``dataset/gpqa_<subset>.csv``
with a header; ``Question``, ``Correct Answer`` and ``Incorrect Answer 1..3`` columns. The
correct answer has its own column, so options are shuffled, seeded by ``Record ID``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ember.data._errors import CorruptDataFileError
from ember.data._formats import iter_csv
from ember.data._item import DatasetItem
from ember.data.builders._base import BenchmarkBuilder, shuffle_options

__all__ = ["GPQA"]

_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


class GPQA(BenchmarkBuilder):
    name = "ember_gpqa"
    DATASET = "gpqa"
    DESCRIPTION = "GPQA: four-option graduate-level biology, physics and chemistry questions."
    HOW_TO_GET = (
        "download dataset.zip from https://github.com/idavidrein/gpqa (the password is in its README) "
        "and extract it into the source directory, so that dataset/gpqa_main.csv exists"
    )
    TASK = "multiple_choice"
    SPLITS = ("train",)
    SUBSETS = ("main", "diamond", "extended")
    DEFAULT_SUBSET = "main"

    @classmethod
    def files(cls, subset: str, split: str) -> tuple[str, ...]:
        return (f"dataset/gpqa_{subset}.csv",)

    def parse(self, path: Path, subset: str, split: str) -> Iterator[DatasetItem]:
        for line, row in iter_csv(path):
            try:
                record_id = row.get("Record ID") or str(line)
                options, correct = shuffle_options(row["Correct Answer"].strip(), [row[c].strip() for c in _WRONG], record_id)
                question = row["Question"].strip()
            except KeyError as e:
                raise CorruptDataFileError(path, f"missing column {e.args[0]!r}", line=line) from None
            yield DatasetItem.with_options(
                f"{subset}/{record_id}",
                question,
                options,
                correct,
                domain=row.get("High-level domain", ""),
                subdomain=row.get("Subdomain", ""),
            )
