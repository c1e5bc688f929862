"""The root of Ember's errors, and the "did you mean" helper every layer uses.

:class:`EmberError` sits at the very bottom of the package so that every layer (config,
models, the embedded model, operators, data, evaluation) can derive its typed errors
from one root without importing another layer. Its one job beyond ``Exception``: every
message passes through :func:`~ember._runtime._redact.redact`, so no error Ember raises
can carry a registered secret or a key-shaped string.

>>> from ember._runtime import EmberError, close_matches
>>> close_matches("gpt-4", ["gpt-4o", "claude-3", "gpt-4o-mini"])
['gpt-4o', 'gpt-4o-mini']
>>> str(EmberError("bad key sk-abcdefghijklmnopqrstuvwx"))
'bad key ***'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ember._runtime._redact import redact

__all__ = ["EmberError", "close_matches", "did_you_mean"]


class EmberError(Exception):
    """Base of every error Ember raises on purpose; its message is always redacted."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def close_matches(name: str, known: Iterable[str], *, n: int = 3) -> list[str]:
    """Up to ``n`` entries of ``known`` that look like ``name``, best first."""
    return difflib.get_close_matches(name, [str(k) for k in known], n=n, cutoff=0.5)


def did_you_mean(matches: Iterable[str]) -> str:
    """The sentence appended to an error message: ``" Did you mean: a, b?"``, or ``""``."""
    matches = list(matches)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
