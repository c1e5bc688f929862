"""AIME: American Invitational Mathematics Examination problems; answers are integers 0-999.

The MAA publishes no machine-readable file; the community releases (e.g. the
Hugging Face ``AIME_2024`` sets) share a shape, which this reads: ``aime_<year>.jsonl``, one
``{"ID", "Problem", "Answer"}`` object per line (field names in any letter case).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ember.data._errors import CorruptDataFileError
from ember.data._formats import iter_jsonl
from ember.data._item import DatasetItem
from ember.data.builders._base import BenchmarkBuilder

__all__ = ["AIME"]


class AIME(BenchmarkBuilder):
    name = "ember_aime"
    DATASET = "aime"
    DESCRIPTION = "AIME: competition maths with integer answers (subset = year; none = all years present)."
    HOW_TO_GET = (
        "save each year's problems as aime_<year>.jsonl with ID, Problem and Answer fields per line "
        "(e.g. from https://huggingface.co/datasets/Maxwell-Jia/AIME_2024; problems: "
        "https://artofproblemsolving.com/wiki/index.php/AIME_Problems_and_Solutions)"
    )
    TASK = "numeric"
    SPLITS = ("test",)

    @classmethod
    def files(cls, subset: str, split: str) -> tuple[str, ...]:
        return (f"aime_{subset}.jsonl",)

    @classmethod
    def discover_subsets(cls, source_dir: Path) -> tuple[str, ...]:
        return tuple(sorted(p.stem.removeprefix("aime_") for p in source_dir.glob("aime_*.jsonl")))

    def parse(self, path: Path, subset: str, split: str) -> Iterator[DatasetItem]:
        for line, record in iter_jsonl(path):
            fields = {key.lower(): value for key, value in record.items()}
            if "problem" not in fields or "answer" not in fields:
                raise CorruptDataFileError(path, f"expected Problem and Answer fields, got {', '.join(record)}", line=line)
            answer = str(fields["answer"]).strip()
            if not answer.lstrip("-").isdigit():
                raise CorruptDataFileError(path, f"answer must be an integer, got {answer!r}", line=line)
            yield DatasetItem(
                id=f"{subset}/{fields.get('id', line)}", query=fields["problem"], answer=str(int(answer)), metadata={"year": subset}
            )
