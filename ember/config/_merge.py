"""Layers of raw settings, their deep merge, and validation that blames the right layer.

A layer is what one source said (a file, an environment variable, an override), kept
apart until validation so that an error can name the source of the bad value, which is
usually the thing the user has to go and fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pydantic import ValidationError

from ember.config._errors import ConfigError
from ember.config._schema import EmberConfig

__all__ = ["Layer", "deep_merge", "merge_layers", "validate"]


class Layer(NamedTuple):
    """One source's raw settings (``{section: {key: ...}}``), and how errors should name it."""

    label: str
    data: Mapping[str, Any]


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, anything else in ``top`` replaces.

    Neither input is modified; untouched subtrees are shared, which is safe because layers
    are never mutated once built.
    """
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = deep_merge(below, value)
        else:
            merged[key] = value
    return merged


def merge_layers(layers: Iterable[Layer]) -> dict[str, Any]:
    """Merge ``layers``, lowest precedence first."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer.data)
    return merged


def validate(data: Mapping[str, Any], layers: Sequence[Layer]) -> EmberConfig:
    """Validate merged ``data``; on failure raise :class:`ConfigError` naming keys and sources.

    Pydantic's own message quotes the offending input, which may be a key, so the message is
    rebuilt from the error locations alone and the original exception is not chained.
    """
    try:
        return EmberConfig.model_validate(data)
    except ValidationError as error:
        problems = error.errors(include_input=False, include_url=False, include_context=False)
    keys = tuple(".".join(str(part) for part in problem["loc"]) for problem in problems)
    lines = [
        f"{key}: {problem['msg']}{_origin(problem['loc'], layers)}" for key, problem in zip(keys, problems)
    ]
    raise ConfigError("invalid configuration: " + "; ".join(lines), keys=keys)


def _origin(loc: tuple[Any, ...], layers: Sequence[Layer]) -> str:
    """`` (from <label>)`` for the highest-precedence layer that sets ``loc``, else ``''``."""
    for layer in reversed(layers):
        node: Any = layer.data
        for part in loc:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            return f" (from {layer.label})"
    return ""
