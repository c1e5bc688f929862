"""GSM8K (Cobbe et al., 2021): grade-school maths word problems with numeric answers.

Official format (github.com/openai/grade-school-math): JSONL with ``question`` and
``answer``, where the answer is a worked solution ending in ``#### <number>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ember.data._errors import CorruptDataFileError
from ember.data._formats import iter_jsonl
from ember.data._item import DatasetItem
from ember.data.builders._base import BenchmarkBuilder

__all__ = ["GSM8K"]


class GSM8K(BenchmarkBuilder):
    name = "ember_gsm8k"
    DATASET = "gsm8k"
    DESCRIPTION = "GSM8K: grade-school maths word problems; the answer is a number."
    HOW_TO_GET = (
        "clone https://github.com/openai/grade-school-math into the source directory, "
        "so that grade_school_math/data/test.jsonl exists"
    )
    TASK = "numeric"
    SPLITS = ("test", "train")
    SUBSETS = ("main", "socratic")
    DEFAULT_SUBSET = "main"

    @classmethod
    def files(cls, subset: str, split: str) -> tuple[str, ...]:
        suffix = "" if subset == "main" else "_socratic"
        return (f"grade_school_math/data/{split}{suffix}.jsonl",)

    def parse(self, path: Path, subset: str, split: str) -> Iterator[DatasetItem]:
        for line, record in iter_jsonl(path):
            try:
                question, solution = record["question"], record["answer"]
            except KeyError as e:
                raise CorruptDataFileError(path, f"missing field {e.args[0]!r}", line=line) from None
            rationale, sep, final = str(solution).rpartition("####")
            if not sep or not final.strip():
                raise CorruptDataFileError(path, "answer has no final '#### <number>' line", line=line)
            yield DatasetItem(
                id=f"{subset}/{split}/{line}",
                query=question,
                answer=final.strip().replace(",", ""),
                metadata={"solution": rationale.strip()},
            )
