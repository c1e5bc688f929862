"""Generic loaders: any JSONL, CSV, JSON or Parquet file as a dataset, via a field mapping.

``fields`` maps an item field to where it lives in a record::

    DataLoader("qa.parquet", fields={"query": "question", "answer": "label",
                                     "choices": ["A", "B", "C", "D"]})

A value is a column name, a dotted path into nested JSON (``"question.stem"``), or, for
``choices`` only, a list of columns. Unmapped fields default to the column of the same
name; every column left over lands in ``metadata``. Without an ``id`` column the id is
the record's position, which is stable as long as the file is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ember.data._dataset import Dataset
from ember.data._errors import CorruptDataFileError, MissingDataFilesError
from ember.data._formats import count_records, format_of, read_records
from ember.data._item import DatasetItem, choice_labels
from ember.data._samplers import Sampler
from ember.data._transforms import Transform
from ember.data._validators import Validator, default_validators

__all__ = ["DataLoader", "FileSource"]

FieldSpec = str | Sequence[str]
_FIELDS = ("id", "query", "answer", "choices")


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


class FileSource:
    """Streams one file's records as :class:`DatasetItem`; sized by a counting pass, done once."""

    def __init__(self, path: str | Path, fields: Mapping[str, FieldSpec] | None = None, *, format: str | None = None) -> None:
        self.path = Path(path).expanduser()
        unknown = set(fields or ()) - set(_FIELDS)
        if unknown:
            raise ValueError(f"fields: unknown item field(s) {sorted(unknown)}; map any of {', '.join(_FIELDS)}")
        self.fields = {name: name for name in _FIELDS} | dict(fields or {})
        self.format = format or format_of(self.path)
        if not self.path.is_file():
            raise MissingDataFilesError(self.path.name, self.path.parent, [self.path.name], [self.path.name], "")
        self._size: int | None = None

    def __len__(self) -> int:
        if self._size is None:
            self._size = count_records(self.path, self.format)
        return self._size

    def __iter__(self) -> Iterator[DatasetItem]:
        for position, (where, record) in enumerate(read_records(self.path, self.format)):
            if not isinstance(record, Mapping):
                raise CorruptDataFileError(self.path, f"expected a record with named fields, got {type(record).__name__}", line=where)
            yield self._item(position, where, record)

    def _item(self, position: int, where: int, record: Mapping[str, Any]) -> DatasetItem:
        used: set[str] = set()

        def get(field: str, required: bool) -> Any:
            spec = self.fields[field]
            try:
                if isinstance(spec, str):
                    used.add(spec.split(".")[0])
                    return _lookup(record, spec)
                used.update(spec)
                return [record[column] for column in spec]
            except KeyError as e:
                if required:
                    raise CorruptDataFileError(
                        self.path, f"no field {e.args[0]!r} for item {field!r} (record has: {', '.join(record)})", line=where
                    ) from None
                return None

        item_id = get("id", False)
        query = get("query", True)
        answer = get("answer", False)
        choices = self._choices(get("choices", False), where)
        if choices and answer is not None and not isinstance(answer, bool) and isinstance(answer, int):
            labels = list(choices)
            answer = labels[answer] if 0 <= answer < len(labels) else answer  # 0-based index, as in HF exports
        answer = "" if answer is None else str(answer)
        if choices and answer not in choices:
            answer = next((label for label, text in choices.items() if text == answer), answer)
        metadata = {key: value for key, value in record.items() if key not in used}
        return DatasetItem(
            id=str(position if item_id is None else item_id), query=str(query), answer=answer, choices=choices, metadata=metadata
        )

    def _choices(self, raw: Any, where: int) -> dict[str, str]:
        if raw is None:
            return {}
        if isinstance(raw, Mapping):
            return {str(label): str(text) for label, text in raw.items()}
        if isinstance(raw, (list, tuple)):
            return dict(zip(choice_labels(len(raw)), map(str, raw)))
        raise CorruptDataFileError(self.path, f"choices must be a list or mapping, got {type(raw).__name__}", line=where)

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r}, format={self.format!r})"


class DataLoader(Dataset):
    """A :class:`Dataset` over one file; see the module docstring for ``fields``.

    Validation defaults to the benchmark checks (a query, an answer, coherent choices);
    pass ``validators=()`` for unlabelled data.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fields: Mapping[str, FieldSpec] | None = None,
        format: str | None = None,
        name: str | None = None,
        sampler: Sampler | None = None,
        transforms: Sequence[Transform] = (),
        validators: Sequence[Validator] | None = None,
        on_invalid: str = "raise",
    ) -> None:
        source = FileSource(path, fields, format=format)
        super().__init__(
            source,
            name=name or source.path.stem,
            sampler=sampler,
            transforms=transforms,
            validators=default_validators() if validators is None else validators,
            on_invalid=on_invalid,  # type: ignore[arg-type]
        )
