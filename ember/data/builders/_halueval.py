"""HaluEval, QA task (Li et al., 2023): is an answer supported by the given knowledge?

Official format (github.com/RUCAIBox/HaluEval): ``data/qa_data.json``, one JSON object per
line with ``knowledge``, ``question``, ``right_answer`` and ``hallucinated_answer``. Each
record becomes two yes/no items, one per answer, so the set is balanced by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ember.data._errors import CorruptDataFileError
from ember.data._formats import iter_jsonl
from ember.data._item import DatasetItem
from ember.data.builders._base import BenchmarkBuilder

__all__ = ["HaluEval"]

_PROMPT = (
    "Knowledge: {knowledge}\nQuestion: {question}\nAnswer: {answer}\n"
    "Does the answer contain information that is not supported by the knowledge or is wrong (a hallucination)?"
)


class HaluEval(BenchmarkBuilder):
    name = "ember_halueval"
    DATASET = "halueval"
    DESCRIPTION = "HaluEval QA: decide whether a candidate answer is a hallucination (Yes/No)."
    HOW_TO_GET = "clone https://github.com/RUCAIBox/HaluEval into the source directory, so that data/qa_data.json exists"
    TASK = "multiple_choice"
    SPLITS = ("test",)
    SUBSETS = ("qa",)
    DEFAULT_SUBSET = "qa"

    @classmethod
    def files(cls, subset: str, split: str) -> tuple[str, ...]:
        return ("data/qa_data.json",)

    def parse(self, path: Path, subset: str, split: str) -> Iterator[DatasetItem]:
        for line, record in iter_jsonl(path):
            try:
                knowledge, question = record["knowledge"], record["question"]
                candidates = (("right", record["right_answer"], 1), ("hallucinated", record["hallucinated_answer"], 0))
            except KeyError as e:
                raise CorruptDataFileError(path, f"missing field {e.args[0]!r}", line=line) from None
            for kind, answer, correct in candidates:
                yield DatasetItem.with_options(
                    f"{subset}/{line}/{kind}",
                    _PROMPT.format(knowledge=knowledge, question=question, answer=answer),
                    ["Yes", "No"],
                    correct,
                    candidate=kind,
                )
