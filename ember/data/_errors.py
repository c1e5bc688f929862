"""Typed errors of the data layer.

A researcher meets these before any model is called, so each one says what to do next:
which files a benchmark expects and where to get them, which line of which file is
broken, which names exist when the one given does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ember._runtime import EmberError, close_matches, did_you_mean

__all__ = [
    "DatasetError",
    "UnknownDatasetError",
    "MissingDataFilesError",
    "CorruptDataFileError",
    "InvalidItemError",
]


class DatasetError(EmberError):
    """Base of every data-layer error."""


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset, subset or split name that does not exist; lists the ones that do."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, where: str = "") -> None:
        known = sorted(known)
        self.name, self.known = name, known
        self.close_matches = close_matches(name, known)
        hint = did_you_mean(self.close_matches)
        listing = ", ".join(known) if len(known) <= 60 else ", ".join(known[:60]) + ", ..."
        scope = f" of {where}" if where else ""
        super().__init__(f"unknown {kind} {name!r}{scope}.{hint} Known: {listing or '(none)'}.")

    __str__ = Exception.__str__  # KeyError would quote the message


class MissingDataFilesError(DatasetError, FileNotFoundError):
    """A benchmark's files are not where they are looked for.

    Names every expected file (marking the missing ones) and where to download them, so
    the fix needs no reading of source code.
    """

    def __init__(self, dataset: str, source_dir: Path, expected: Sequence[str], missing: Sequence[str], how_to_get: str) -> None:
        self.dataset, self.source_dir = dataset, Path(source_dir)
        self.expected, self.missing = tuple(expected), tuple(missing)
        lines = [f"  {'MISSING ' if rel in set(missing) else 'found   '}{rel}" for rel in expected]
        super().__init__(
            f"{dataset}: {len(missing)} of {len(expected)} expected file(s) missing under {self.source_dir}\n"
            + "\n".join(lines)
            + (f"\nGet them: {how_to_get}\nThen pass source_dir= (or --data-dir), or place them under data.data_dir/<dataset>." if how_to_get else "")
        )


class CorruptDataFileError(DatasetError, ValueError):
    """A data file that exists but cannot be read as its format says; names file and place."""

    def __init__(self, path: Path | str, reason: str, *, line: int | None = None) -> None:
        self.path, self.line, self.reason = Path(path), line, reason
        where = f"{self.path}, line {line}" if line is not None else str(self.path)
        super().__init__(f"corrupt data file {where}: {reason}")


class InvalidItemError(DatasetError, ValueError):
    """An item a validator rejected; carries the item id and every problem found."""

    def __init__(self, item_id: str, problems: Sequence[str], *, dataset: str = "") -> None:
        self.item_id, self.problems = item_id, tuple(problems)
        scope = f"{dataset} " if dataset else ""
        super().__init__(f"invalid {scope}item {item_id!r}: " + "; ".join(problems))
