"""Streaming readers for the file formats benchmarks ship in: JSONL, CSV, JSON, Parquet.

Every reader yields ``(location, record)`` one record at a time, so a large file is never
held in memory, and turns any parse failure into :class:`CorruptDataFileError` naming the
file and line (row for Parquet). Benchmark builders and the generic :class:`DataLoader`
share these, so a broken file reads the same whatever loaded it.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ember.data._errors import CorruptDataFileError

__all__ = ["FORMATS", "format_of", "read_records", "count_records", "iter_jsonl", "iter_csv", "iter_json", "iter_parquet"]

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".json": "json", ".parquet": "parquet"}
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long passages are legitimate fields


def format_of(path: Path) -> str:
    """The format a file's extension names; raises ``ValueError`` for others."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path}: use one of {', '.join(sorted(FORMATS))} or pass format=")
    return fmt


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """One JSON object per line; blank lines are skipped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorruptDataFileError(path, f"not valid JSON ({e})", line=lineno) from None
            if not isinstance(record, dict):
                raise CorruptDataFileError(path, f"expected a JSON object, got {type(record).__name__}", line=lineno)
            yield lineno, record


def iter_csv(path: Path, *, header: bool = True, width: int | None = None) -> Iterator[tuple[int, Any]]:
    """Rows as dicts (``header=True``) or lists; ``width`` enforces a column count.

    The location is the line where the row starts (quoted fields may span lines).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            columns = None
            if header:
                columns = next(reader, None)
                if columns is None:
                    raise CorruptDataFileError(path, "empty file: expected a header row", line=1)
                width = len(columns)
            start = reader.line_num + 1
            for row in reader:
                if not row:
                    start = reader.line_num + 1
                    continue
                if width is not None and len(row) != width:
                    raise CorruptDataFileError(path, f"expected {width} columns, found {len(row)}", line=start)
                yield start, dict(zip(columns, row)) if columns else row
                start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise CorruptDataFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise CorruptDataFileError(path, f"not valid CSV ({e})", line=reader.line_num) from None


def iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON array of records (small files only: JSON cannot be streamed by element)."""
    try:
        data = json.loads(Path(path).read_bytes())
    except json.JSONDecodeError as e:
        raise CorruptDataFileError(path, f"not valid JSON ({e.msg})", line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise CorruptDataFileError(path, f"not UTF-8 text ({e.reason})") from None
    if not isinstance(data, list):
        raise CorruptDataFileError(path, f"expected a JSON array of records, got {type(data).__name__}")
    yield from enumerate(data, 1)


def iter_parquet(path: Path, *, batch_size: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
    """Row groups streamed in batches; the location is the 1-based row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        row = 0
        for batch in parquet.iter_batches(batch_size=batch_size):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptDataFileError(path, f"not a readable Parquet file ({e})") from None


_READERS = {"jsonl": iter_jsonl, "csv": iter_csv, "json": iter_json, "parquet": iter_parquet}


def read_records(path: Path, fmt: str | None = None) -> Iterator[tuple[int, Any]]:
    """Records of any supported format, chosen by ``fmt`` or the file extension."""
    return _READERS[fmt or format_of(path)](Path(path))


def count_records(path: Path, fmt: str | None = None) -> int:
    """How many records a file holds, in one streaming pass (Parquet: from its footer)."""
    fmt = fmt or format_of(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception as e:  # noqa: BLE001 - pyarrow raises several unrelated types here
            if isinstance(e, FileNotFoundError):
                raise
            raise CorruptDataFileError(path, f"not a readable Parquet file ({e})") from None
    if fmt == "jsonl":
        with open(path, "rb") as f:
            return sum(1 for raw in f if raw.strip())
    return sum(1 for _ in read_records(path, fmt))
