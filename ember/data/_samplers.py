"""Samplers choose which items of a dataset to evaluate, as sorted positions.

A sampler sees only the dataset's size (and, for stratified sampling, one key per item),
never the items: the dataset then streams or indexes just the chosen positions, so
sampling 100 items from a million holds 100. Positions come back in dataset order, and
:class:`RandomSampler` takes a prefix of one seeded permutation, so for a fixed seed the
sample of 50 is contained in the sample of 100: growing an evaluation reuses finished work.
"""

from __future__ import annotations

import abc
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import numpy as np

__all__ = ["Sampler", "RandomSampler", "FirstNSampler", "StratifiedSampler"]


class Sampler(abc.ABC):
    """Chooses positions ``0 <= i < size``; ``key`` is set when per-item keys are needed."""

    n: int
    key: Callable[[Any], Hashable] | None = None

    @abc.abstractmethod
    def select(self, size: int, keys: Iterable[Hashable] | None = None) -> np.ndarray:
        """Sorted, distinct positions to keep; ``keys`` holds ``key(item)`` per position."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not callable(v))
        return f"{type(self).__name__}({fields})"


def _check_n(sampler: Sampler) -> None:
    if not isinstance(sampler.n, int) or sampler.n < 0:
        raise ValueError(f"{type(sampler).__name__}: n must be an int >= 0, got {sampler.n!r}")


class RandomSampler(Sampler):
    """``n`` items drawn uniformly without replacement, reproducible from ``seed``."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        _check_n(self)

    def select(self, size: int, keys: Iterable[Hashable] | None = None) -> np.ndarray:
        order = np.random.default_rng(self.seed).permutation(size)
        return np.sort(order[: min(self.n, size)])


class FirstNSampler(Sampler):
    """The first ``n`` items: a smoke test that reads no further than it needs."""

    def __init__(self, n: int) -> None:
        self.n = n
        _check_n(self)

    def select(self, size: int, keys: Iterable[Hashable] | None = None) -> np.ndarray:
        return np.arange(min(self.n, size))


class StratifiedSampler(Sampler):
    """``n`` items split across strata in proportion to their sizes (largest remainder).

    ``key`` maps an item to its stratum, e.g. ``lambda item: item.metadata["subject"]``.
    Within a stratum the choice is a seeded random draw; every non-empty stratum gets at
    least one item when ``n`` is at least the number of strata.
    """

    def __init__(self, n: int, key: Callable[[Any], Hashable], seed: int = 0) -> None:
        self.n, self.key, self.seed = n, key, seed
        _check_n(self)

    def select(self, size: int, keys: Iterable[Hashable] | None = None) -> np.ndarray:
        if keys is None:
            raise ValueError("StratifiedSampler needs the key of every item")
        strata: dict[Hashable, list[int]] = defaultdict(list)
        for position, key in enumerate(keys):
            strata[key].append(position)
        n = min(self.n, size)
        names = sorted(strata, key=repr)
        sizes = np.array([len(strata[k]) for k in names], dtype=float)
        quota = self._allocate(n, sizes)
        rng = np.random.default_rng(self.seed)
        chosen = [rng.permutation(strata[k])[:q] for k, q in zip(names, quota) if q]
        return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)

    @staticmethod
    def _allocate(n: int, sizes: np.ndarray) -> np.ndarray:
        """Per-stratum counts summing to ``n`` (<= total): one each if n allows, the rest by largest remainder."""
        sizes = sizes.astype(int)
        quota = np.ones(len(sizes), dtype=int) if n >= len(sizes) else np.zeros(len(sizes), dtype=int)
        room = sizes - quota
        left = n - int(quota.sum())
        if left <= 0:
            return quota
        exact = left * room / room.sum()
        extra = np.minimum(np.floor(exact).astype(int), room)
        order = np.argsort(-(exact - extra), kind="stable")
        while extra.sum() < left:  # capacity-limited strata can leave a shortfall after one pass
            for i in order:
                if extra.sum() < left and extra[i] < room[i]:
                    extra[i] += 1
        return quota + extra
