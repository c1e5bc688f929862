"""``DataService``: the one call that turns a dataset name into a sampled, validated dataset.

    DataService().load_dataset(dataset_name="mmlu", subset="high_school_mathematics",
                               sampler=RandomSampler(n=100))

Benchmark files are read from ``source_dir`` (default ``<data.data_dir>/<dataset>``) and
prepared once into ``cache_dir`` (default ``data.cache_dir``, else ``<data.data_dir>/.prepared``); nothing is
ever downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ember.data._dataset import Dataset
from ember.data._registry import DatasetRegistry, DatasetSpec, default_registry
from ember.data._samplers import Sampler
from ember.data._transforms import Transform
from ember.data._validators import Validator, default_validators

__all__ = ["DataService"]


class DataService:
    """Loads registered datasets. ``data_dir`` defaults to the ``data.data_dir`` setting."""

    def __init__(
        self,
        registry: DatasetRegistry | None = None,
        *,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.registry = registry or default_registry()
        self._data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None

    @property
    def data_dir(self) -> Path:
        return self._data_dir or Path(_data_config().data_dir)

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is not None:
            return self._cache_dir
        configured = _data_config().cache_dir
        return Path(configured) if configured is not None else self.data_dir / ".prepared"

    def info(self, dataset_name: str) -> DatasetSpec:
        return self.registry.get(dataset_name)

    def list_datasets(self) -> list[DatasetSpec]:
        return list(self.registry)

    def load_dataset(
        self,
        dataset_name: str,
        subset: str | None = None,
        split: str | None = None,
        sampler: Sampler | None = None,
        *,
        source_dir: str | Path | None = None,
        transforms: Sequence[Transform] = (),
        validators: Sequence[Validator] | None = None,
        on_invalid: Literal["raise", "skip"] = "raise",
    ) -> Dataset:
        """Open ``split`` (default: the dataset's first) of ``subset`` and wrap it lazily.

        Raises :class:`UnknownDatasetError` for an unknown name, subset or split,
        :class:`MissingDataFilesError` (listing the expected files and where to get them)
        and :class:`CorruptDataFileError` (naming file and line) for bad files.
        """
        spec = self.registry.get(dataset_name)
        source_dir = Path(source_dir).expanduser() if source_dir is not None else self.data_dir / spec.name
        source = spec.open(source_dir, subset, split or spec.default_split, self.cache_dir)
        label = spec.name if subset is None else f"{spec.name}/{subset}"
        return Dataset(
            source,
            name=label,
            sampler=sampler,
            transforms=transforms,
            validators=default_validators() if validators is None else validators,
            on_invalid=on_invalid,
        )


def _data_config():
    from ember.config import get_config_manager

    return get_config_manager().get_config("data")
