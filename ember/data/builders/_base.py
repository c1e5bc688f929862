"""The one tensorflow-datasets builder every benchmark shares; subclasses only parse files.

Why tensorflow-datasets without TensorFlow: its ``GeneratorBasedBuilder`` writes
``array_record`` files that ``as_data_source`` reads back with random access and no
TensorFlow, so a benchmark is parsed once and then sampled by position at any size.

A benchmark's raw files come from a directory the user names (nothing is downloaded).
The prepared copy lives under ``cache_dir/<fingerprint>``, where the fingerprint covers
the raw files' paths, sizes and modification times: edit or replace a file and the next
load prepares afresh instead of serving stale items.

A subclass declares where its files live (:meth:`files`) and how to read one
(:meth:`parse`); everything else — splits, subsets, caching, errors — is here.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from ember.data._errors import CorruptDataFileError, DatasetError, MissingDataFilesError, UnknownDatasetError
from ember.data._item import DatasetItem

__all__ = ["BenchmarkBuilder", "BenchmarkSource", "shuffle_options"]

logger = logging.getLogger(__name__)
_prepare_lock = threading.Lock()
ALL = "all"


class _QuietCustomConfig(logging.Filter):
    # Subsets are tfds configs made on demand; tfds warns about each one at WARNING level.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_QuietCustomConfig())


class BenchmarkBuilder(tfds.core.GeneratorBasedBuilder):
    """Prepares one subset of a benchmark from its official files into ``array_record``.

    Subclasses set the class attributes below and implement :meth:`files` and :meth:`parse`.
    ``subset=None`` selects the default subset, or every discovered subset where the
    benchmark has no default (MMLU subjects, AIME years).
    """

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for download checksums next to a builder's module; there are no downloads
    # here, and the lookup needs importlib_resources, which tfds does not install.
    code_path = None
    DATASET: ClassVar[str]  # Ember's registry name
    DESCRIPTION: ClassVar[str]
    HOW_TO_GET: ClassVar[str]
    TASK: ClassVar[str]  # "multiple_choice" | "numeric": picks the default evaluator
    SPLITS: ClassVar[tuple[str, ...]]
    SUBSETS: ClassVar[tuple[str, ...]] = ()  # empty: discovered from the files present
    DEFAULT_SUBSET: ClassVar[str | None] = None

    def __init__(self, *, source_dir: str | Path, subset: str | None = None, cache_dir: str | Path, **kwargs: Any) -> None:
        self.source_dir = Path(source_dir).expanduser()
        self.subset = self.resolve_subset(self.source_dir, subset)
        self._present = {split: self._split_files_present(self.source_dir, self.subset, split) for split in self.SPLITS}
        super().__init__(
            data_dir=str(self.prepared_root(self.source_dir, self.subset, Path(cache_dir).expanduser())),
            config=tfds.core.BuilderConfig(name=self.subset, version=self.VERSION),
            file_format="array_record",
            **kwargs,
        )

    @classmethod
    def open(cls, source_dir: Path, subset: str | None, split: str, cache_dir: Path) -> BenchmarkSource:
        """Prepare (once per fingerprint) and open ``split``; a damaged prepared copy is rebuilt once.

        The prepared copy is derived data: if it cannot be read (a truncated file, an
        interrupted disk), it is deleted and prepared again from the source files.
        """
        for attempt in (1, 2):
            try:
                return cls(source_dir=source_dir, subset=subset, cache_dir=cache_dir).source(split)
            except DatasetError:
                raise
            except Exception as error:  # noqa: BLE001 - tfds and array_record raise many types for bad files
                root = cls.prepared_root(Path(source_dir), cls.resolve_subset(Path(source_dir), subset), Path(cache_dir))
                if attempt == 2 or not root.exists():
                    raise CorruptDataFileError(root, f"prepared copy unreadable ({type(error).__name__}: {error})") from error
                logger.warning("%s: prepared copy at %s unreadable (%s); preparing again", cls.DATASET, root, error)
                shutil.rmtree(root)
        raise AssertionError("unreachable")

    # --- what a subclass provides ------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def files(cls, subset: str, split: str) -> tuple[str, ...]:
        """Paths, relative to the source directory, that hold ``split`` of ``subset``."""

    @abc.abstractmethod
    def parse(self, path: Path, subset: str, split: str) -> Iterator[DatasetItem]:
        """The items of one file, in file order, with ids unique within the split."""

    @classmethod
    def discover_subsets(cls, source_dir: Path) -> tuple[str, ...]:
        """The subsets there are; benchmarks without a fixed list (MMLU, AIME) look at the files present."""
        return cls.SUBSETS

    # --- subsets, splits and files -----------------------------------------------------

    @classmethod
    def resolve_subset(cls, source_dir: Path, subset: str | None) -> str:
        known = cls.discover_subsets(source_dir)
        if subset is None:
            return cls.DEFAULT_SUBSET or ALL
        if subset != ALL and subset not in known:
            if not known:  # nothing on disk to compare against: say which files are expected
                raise cls.missing_files_error(source_dir, subset, cls.SPLITS[0])
            raise UnknownDatasetError("subset", subset, known, where=cls.DATASET)
        return subset

    @classmethod
    def _subset_names(cls, source_dir: Path, subset: str) -> tuple[str, ...]:
        return cls.discover_subsets(source_dir) if subset == ALL else (subset,)

    @classmethod
    def _subset_files(cls, source_dir: Path, subset: str, split: str) -> tuple[str, ...]:
        return tuple(rel for name in cls._subset_names(source_dir, subset) for rel in cls.files(name, split))

    @classmethod
    def _split_files_present(cls, source_dir: Path, subset: str, split: str) -> bool:
        files = cls._subset_files(source_dir, subset, split)
        return bool(files) and all((source_dir / rel).is_file() for rel in files)

    @classmethod
    def missing_files_error(cls, source_dir: Path, subset: str, split: str) -> MissingDataFilesError:
        names = (cls.SUBSETS or ("<subset>",)) if subset == ALL else (subset,)
        expected = [rel for name in names for s in cls.SPLITS for rel in cls.files(name, s)]
        missing = [rel for rel in expected if not (source_dir / rel).is_file()]
        return MissingDataFilesError(f"{cls.DATASET} ({subset}, split {split!r})", source_dir, expected, missing, cls.HOW_TO_GET)

    @classmethod
    def prepared_root(cls, source_dir: Path, subset: str, cache_dir: Path) -> Path:
        """``cache_dir/<dataset>/<fingerprint>``: the fingerprint covers the present files' paths, sizes and mtimes."""
        digest = hashlib.sha256(f"{cls.name}/{cls.VERSION}/{subset}".encode())
        for split in cls.SPLITS:
            if not cls._split_files_present(source_dir, subset, split):
                continue
            for rel in cls._subset_files(source_dir, subset, split):
                stat = (source_dir / rel).stat()
                digest.update(f"\0{split}\0{rel}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return cache_dir / cls.DATASET / digest.hexdigest()[:16]

    # --- tensorflow-datasets protocol --------------------------------------------------

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "id": text,
                    "query": text,
                    "answer": text,
                    "choice_labels": tfds.features.Sequence(text),
                    "choice_texts": tfds.features.Sequence(text),
                    "metadata": text,  # JSON: benchmarks differ in what they carry
                }
            ),
            disable_shuffling=True,  # keep file order: ids and samples stay stable
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
        return {split: self._generate_examples(split) for split in self.SPLITS if self._present[split]}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        seen: set[str] = set()  # ids key the results journal: a repeat would overwrite a result
        for name in self._subset_names(self.source_dir, self.subset):
            for rel in self.files(name, split):
                for item in self.parse(self.source_dir / rel, name, split):
                    if item.id in seen:
                        raise CorruptDataFileError(self.source_dir / rel, f"item id {item.id!r} occurs twice")
                    seen.add(item.id)
                    yield item.id, {
                        "id": item.id,
                        "query": item.query,
                        "answer": item.answer,
                        "choice_labels": list(item.choices),
                        "choice_texts": list(item.choices.values()),
                        "metadata": json.dumps(dict(item.metadata), ensure_ascii=False),
                    }

    def _log_download_bytes(self) -> None:  # tfds prints these to stdout; a library should not
        logger.info("preparing %s/%s from %s into %s", self.DATASET, self.subset, self.source_dir, self.data_dir)

    def _log_download_done(self) -> None:
        logger.info("prepared %s/%s", self.DATASET, self.subset)

    # --- reading -----------------------------------------------------------------------

    def source(self, split: str) -> BenchmarkSource:
        """Prepare (once per fingerprint) and open ``split`` for random-access reading."""
        if split not in self.SPLITS:
            raise UnknownDatasetError("split", split, self.SPLITS, where=self.DATASET)
        if not self._present[split]:
            raise self.missing_files_error(self.source_dir, self.subset, split)
        with _prepare_lock, _progress_bars_off():
            self.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP)
            )
        data = self.as_data_source(split=split)
        if len(data):  # array_record opens files lazily: touch both ends so damage shows here
            data.__getitems__([0, len(data) - 1])
        return BenchmarkSource(data)


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
    previous = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(previous)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class BenchmarkSource:
    """A prepared split: sized, indexable, and iterated in batched reads."""

    def __init__(self, data_source: Any, *, batch: int = 256) -> None:
        self._data, self._batch = data_source, batch

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> DatasetItem:
        return self._decode(self._data[index])

    def __iter__(self) -> Iterator[DatasetItem]:
        for start in range(0, len(self._data), self._batch):
            stop = min(start + self._batch, len(self._data))
            for record in self._data.__getitems__(list(range(start, stop))):
                yield self._decode(record)

    @staticmethod
    def _decode(record: dict[str, Any]) -> DatasetItem:
        labels = [_text(v) for v in np.asarray(record["choice_labels"]).tolist()]
        texts = [_text(v) for v in np.asarray(record["choice_texts"]).tolist()]
        return DatasetItem(
            id=_text(record["id"]),
            query=_text(record["query"]),
            answer=_text(record["answer"]),
            choices=dict(zip(labels, texts)),
            metadata=json.loads(_text(record["metadata"])),
        )


def shuffle_options(correct: str, wrong: list[str], seed: str) -> tuple[list[str], int]:
    """Options in a fixed pseudo-random order, and where the correct one landed.

    For benchmarks whose files list the right answer first or in its own column: without
    this, "always answer A" would score 100%. Seeded by ``seed`` (the item's id), so every
    preparation produces the same order.
    """
    options = [correct, *wrong]
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)
    return [options[i] for i in order], order.index(0)
