"""A lazy, re-iterable dataset: source -> sampler -> transforms -> validators.

Nothing is read until iteration, and iteration streams: the source yields one item at a
time, the sampler chooses positions up front from the size alone, and only chosen items
are decoded. Each step returns a new :class:`Dataset`, so a loaded benchmark can be
narrowed or transformed without reloading and without surprising another holder of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from ember.data._errors import InvalidItemError
from ember.data._item import DatasetItem
from ember.data._samplers import Sampler
from ember.data._transforms import Transform
from ember.data._validators import Validator

__all__ = ["Dataset", "ItemSource"]

logger = logging.getLogger(__name__)


@runtime_checkable
class ItemSource(Protocol):
    """Anything sized that yields items; sources that also index (``source[i]``) skip streaming to sampled items."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[DatasetItem]: ...


class Dataset:
    """Items from ``source``, optionally sampled, transformed and validated as they stream.

    ``on_invalid="raise"`` stops at the first item a validator rejects; ``"skip"`` drops it
    and logs how many were dropped when the pass ends.
    """

    def __init__(
        self,
        source: ItemSource,
        *,
        name: str = "",
        sampler: Sampler | None = None,
        transforms: Sequence[Transform] = (),
        validators: Sequence[Validator] = (),
        on_invalid: Literal["raise", "skip"] = "raise",
    ) -> None:
        if on_invalid not in ("raise", "skip"):
            raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
        self.source, self.name, self.sampler = source, name, sampler
        self.transforms, self.validators, self.on_invalid = tuple(transforms), tuple(validators), on_invalid

    @classmethod
    def from_items(cls, items: Iterable[DatasetItem | Mapping[str, Any]], *, name: str = "") -> Dataset:
        """A dataset over in-memory items (dicts take ``DatasetItem`` fields; ``id`` defaults to the position)."""
        materialised = [
            item if isinstance(item, DatasetItem) else DatasetItem(**{"id": str(i), **item}) for i, item in enumerate(items)
        ]
        return cls(materialised, name=name)

    def _with(self, **changes: Any) -> Dataset:
        fields = dict(
            name=self.name,
            sampler=self.sampler,
            transforms=self.transforms,
            validators=self.validators,
            on_invalid=self.on_invalid,
        )
        return Dataset(self.source, **{**fields, **changes})

    def sample(self, sampler: Sampler) -> Dataset:
        """The same dataset restricted to ``sampler``'s choice (replacing any earlier sampler)."""
        return self._with(sampler=sampler)

    def map(self, transform: Transform) -> Dataset:
        """Apply ``transform`` to every item, after sampling and earlier transforms."""
        return self._with(transforms=(*self.transforms, transform))

    def validate(self, *validators: Validator, on_invalid: Literal["raise", "skip"] | None = None) -> Dataset:
        """Check every item with ``validators`` (added to any already set)."""
        return self._with(validators=(*self.validators, *validators), on_invalid=on_invalid or self.on_invalid)

    def __len__(self) -> int:
        """Items a pass yields, before any that validation skips."""
        size = len(self.source)
        return size if self.sampler is None else min(self.sampler.n, size)

    def __iter__(self) -> Iterator[DatasetItem]:
        skipped = 0
        for item in self._sampled():
            for transform in self.transforms:
                item = transform(item)
            problems = [p for check in self.validators for p in check(item)]
            if problems:
                if self.on_invalid == "raise":
                    raise InvalidItemError(item.id, problems, dataset=self.name)
                skipped += 1
                continue
            yield item
        if skipped:
            logger.warning("%s: skipped %d invalid item(s)", self.name or "dataset", skipped)

    def _sampled(self) -> Iterator[DatasetItem]:
        if self.sampler is None:
            yield from self.source
            return
        key = self.sampler.key
        keys = (key(item) for item in self.source) if key is not None else None
        positions = self.sampler.select(len(self.source), keys)
        if hasattr(self.source, "__getitem__"):
            for position in positions:
                yield self.source[int(position)]
            return
        wanted = iter(positions.tolist())
        target = next(wanted, None)
        for position, item in enumerate(self.source):
            if target is None:
                return
            if position == target:
                yield item
                target = next(wanted, None)

    def __repr__(self) -> str:
        parts = [repr(self.name or type(self.source).__name__), f"size={len(self)}"]
        if self.sampler is not None:
            parts.append(f"sampler={self.sampler!r}")
        if self.transforms:
            parts.append(f"transforms={list(self.transforms)!r}")
        return f"Dataset({', '.join(parts)})"
