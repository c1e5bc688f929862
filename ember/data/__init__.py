"""Datasets for evaluation: registry, service, samplers, transformers, validators, loaders.

Benchmark builders (tensorflow-datasets, imported on first use) live in
:mod:`ember.data.builders`. The bundled ``minibench`` needs no download:

>>> from ember.data import DataService, FirstNSampler
>>> data = DataService().load_dataset("minibench", sampler=FirstNSampler(2))
>>> data
Dataset('minibench', size=2, sampler=FirstNSampler(n=2))
>>> [(item.query, item.answer) for item in data]
[('What is 3 times 10?', '30'), ('What is 7 times 9?', '63')]
"""

from ember.data._dataset import Dataset, ItemSource
from ember.data._errors import (
    CorruptDataFileError,
    DatasetError,
    InvalidItemError,
    MissingDataFilesError,
    UnknownDatasetError,
)
from ember.data._item import DatasetItem, choice_labels
from ember.data._loader import DataLoader, FileSource
from ember.data._minibench import minibench_items
from ember.data._registry import INSTRUCTIONS, DatasetRegistry, DatasetSpec, default_registry
from ember.data._samplers import FirstNSampler, RandomSampler, Sampler, StratifiedSampler
from ember.data._service import DataService
from ember.data._transforms import NormalizeWhitespace, ShuffleChoices, Transform
from ember.data._validators import RequireFields, Validator, ValidChoices, default_validators

__all__ = [
    "DataService",
    "Dataset",
    "DatasetItem",
    "DataLoader",
    "FileSource",
    "ItemSource",
    "DatasetRegistry",
    "DatasetSpec",
    "default_registry",
    "INSTRUCTIONS",
    "minibench_items",
    "choice_labels",
    "Sampler",
    "RandomSampler",
    "FirstNSampler",
    "StratifiedSampler",
    "Transform",
    "ShuffleChoices",
    "NormalizeWhitespace",
    "Validator",
    "RequireFields",
    "ValidChoices",
    "default_validators",
    "DatasetError",
    "UnknownDatasetError",
    "MissingDataFilesError",
    "CorruptDataFileError",
    "InvalidItemError",
]
