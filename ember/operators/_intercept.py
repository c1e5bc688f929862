"""A hook on operator calls, for the layers above that record or reschedule them.

The execution engine (``ember.xcs``) needs to see operator calls without the operators
knowing about it: ``autograph`` records each call as a graph node, and ``jit`` starts each
sub-operator call at once and hands back a result that blocks only when read. Operators
sit below the engine, so instead of importing it they expose this one hook, scoped with a
:class:`contextvars.ContextVar` (each thread and task sees its own).

While a hook is active, ``op(inputs=...)`` becomes ``hook(op, inputs, call)``, where
``call(inputs)`` runs the operator as usual with the hook switched off (so calls nested
inside it are plain calls, unless the hook switches itself on again there).

>>> from ember.operators import MostCommon, intercept_calls
>>> seen = []
>>> def record(op, inputs, call):
...     seen.append(type(op).__name__)
...     return call(inputs)
>>> with intercept_calls(record):
...     MostCommon()(inputs={"responses": ["a", "b", "a"]}).final_answer
'a'
>>> seen
['MostCommon']
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["CallHook", "intercept_calls", "current_hook"]

#: ``hook(operator, inputs, call)``; ``call(inputs)`` runs the operator with the hook off.
CallHook = Callable[[Any, Any, Callable[[Any], Any]], Any]

_hook: contextvars.ContextVar[CallHook | None] = contextvars.ContextVar("ember_operator_call_hook", default=None)


def current_hook() -> CallHook | None:
    """The hook active in this thread or task, or ``None``."""
    return _hook.get()


@contextlib.contextmanager
def intercept_calls(hook: CallHook | None) -> Iterator[None]:
    """Route operator calls in this block through ``hook`` (``None`` switches interception off)."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)
