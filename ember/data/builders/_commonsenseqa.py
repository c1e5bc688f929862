"""CommonsenseQA (Talmor et al., 2019): five-option questions needing everyday knowledge.

Official format (tau-nlp.org/commonsenseqa): JSONL, one ``{"id", "answerKey",
"question": {"stem", "question_concept", "choices": [{"label", "text"}, ...]}}`` per line.
The official test file has no answers, so only train and validation are offered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ember.data._errors import CorruptDataFileError
from ember.data._formats import iter_jsonl
from ember.data._item import DatasetItem
from ember.data.builders._base import BenchmarkBuilder

__all__ = ["CommonsenseQA"]

_FILES = {"train": "train_rand_split.jsonl", "validation": "dev_rand_split.jsonl"}


class CommonsenseQA(BenchmarkBuilder):
    name = "ember_commonsenseqa"
    DATASET = "commonsenseqa"
    DESCRIPTION = "CommonsenseQA: five-option everyday-knowledge questions."
    HOW_TO_GET = (
        "download train_rand_split.jsonl and dev_rand_split.jsonl from https://www.tau-nlp.org/commonsenseqa "
        "(s3.amazonaws.com/commensenseqa/) into the source directory"
    )
    TASK = "multiple_choice"
    SPLITS = ("validation", "train")
    SUBSETS = ("default",)
    DEFAULT_SUBSET = "default"

    @classmethod
    def files(cls, subset: str, split: str) -> tuple[str, ...]:
        return (_FILES[split],)

    def parse(self, path: Path, subset: str, split: str) -> Iterator[DatasetItem]:
        for line, record in iter_jsonl(path):
            try:
                question = record["question"]
                choices = {c["label"]: c["text"] for c in question["choices"]}
                yield DatasetItem(
                    id=str(record["id"]),
                    query=question["stem"],
                    answer=record["answerKey"],
                    choices=choices,
                    metadata={"concept": question.get("question_concept", "")},
                )
            except (KeyError, TypeError) as e:
                raise CorruptDataFileError(path, f"not a CommonsenseQA record ({type(e).__name__}: {e})", line=line) from None
