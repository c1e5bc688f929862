"""MMLU (Hendrycks et al., 2021): 57 subjects of four-option questions.

Official format (``data.tar``): one header-less CSV per subject and split,
``data/<split>/<subject>_<split>.csv`` with columns question, A, B, C, D, answer letter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ember.data._errors import CorruptDataFileError
from ember.data._formats import iter_csv
from ember.data._item import DatasetItem
from ember.data.builders._base import BenchmarkBuilder

__all__ = ["MMLU"]

_DIRS = {"test": "test", "validation": "val", "dev": "dev"}


class MMLU(BenchmarkBuilder):
    name = "ember_mmlu"
    DATASET = "mmlu"
    DESCRIPTION = "MMLU: multiple-choice questions in 57 subjects (subset = subject; none = all)."
    HOW_TO_GET = (
        "download https://people.eecs.berkeley.edu/~hendrycks/data.tar (see github.com/hendrycks/test) "
        "and extract it into the source directory, so that data/test/<subject>_test.csv exists"
    )
    TASK = "multiple_choice"
    SPLITS = ("test", "validation", "dev")

    @classmethod
    def files(cls, subset: str, split: str) -> tuple[str, ...]:
        d = _DIRS[split]
        return (f"data/{d}/{subset}_{d}.csv",)

    @classmethod
    def discover_subsets(cls, source_dir: Path) -> tuple[str, ...]:
        return tuple(sorted(p.name.removesuffix("_test.csv") for p in (source_dir / "data" / "test").glob("*_test.csv")))

    def parse(self, path: Path, subset: str, split: str) -> Iterator[DatasetItem]:
        for line, (question, a, b, c, d, answer) in iter_csv(path, header=False, width=6):
            letter = answer.strip().upper()
            if letter not in ("A", "B", "C", "D"):
                raise CorruptDataFileError(path, f"answer must be one of A-D, got {answer!r}", line=line)
            yield DatasetItem.with_options(
                f"{subset}/{split}/{line}", question, [a, b, c, d], "ABCD".index(letter), subject=subset
            )
