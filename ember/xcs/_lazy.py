"""Deferred sub-operator calls and the lazy results that stand for them (used by ``jit``).

A :class:`Call` is one sub-operator call started at once on a worker thread. Its
:class:`Lazy` result is handed back to the operator's ``forward`` immediately, and blocks
only when Python reads it: attribute and item access, iteration, ``len``, ``str``,
``bool``, comparisons, hashing, ``isinstance`` (through ``__class__``). Code that only
passes it on (as ``inputs=`` of another sub-operator, or inside a returned dict) never
blocks: the dependent call resolves its inputs first, on its own thread.

A call is *claimed* exactly once: by the worker that starts it, or, if no worker has picked
it up yet, by whichever thread first needs its value (which then runs it inline), so a
dependent chain never waits on a busy pool.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

__all__ = ["Call", "Lazy", "call_of", "contains_lazy", "lazy_calls_in", "resolve"]


class Call:
    """One started sub-operator call: ``run(operator, inputs)`` with lazy inputs resolved first."""

    __slots__ = ("index", "operator", "inputs", "_run", "future", "_claimed", "_on_read")

    def __init__(self, index: int, operator: Any, inputs: Any, run: Callable[[Any], Any],
                 on_read: Callable[[Call], None] | None = None) -> None:
        self.index, self.operator, self.inputs, self._run = index, operator, inputs, run
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._claimed = threading.Lock()
        self._on_read = on_read

    def _execute(self) -> None:
        self.future.set_running_or_notify_cancel()
        try:
            value = self._run(resolve(self.inputs))
        except BaseException as error:  # delivered to whoever reads the value, and to the group
            self.future.set_exception(error)
        else:
            self.future.set_result(value)

    def start(self) -> Any:
        """The worker's entry point: run the call unless a reader already claimed it."""
        if self._claimed.acquire(blocking=False):
            self._execute()
            return self.future.result()  # a failure reaches the TaskGroup, which cancels siblings
        return None

    def result(self) -> Any:
        """The call's value (its error is raised); runs it here if nobody has started it."""
        if self._claimed.acquire(blocking=False):
            self._execute()
        if self._on_read is not None:
            self._on_read(self)
        return resolve(self.future.result())


class Lazy:
    """The result of a :class:`Call`; behaves like the value once read (and reading blocks)."""

    __slots__ = ("_ember_call",)

    def __init__(self, call: Call) -> None:
        object.__setattr__(self, "_ember_call", call)

    # Python looks dunders up on the type, so each one that reads the value is spelled out.
    def __getattr__(self, name: str) -> Any:
        return getattr(_value(self), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(_value(self), name, value)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(lazy, Record) reads the value
        return type(_value(self))

    def __getitem__(self, key: Any) -> Any:
        return _value(self)[key]

    def __iter__(self) -> Any:
        return iter(_value(self))

    def __len__(self) -> int:
        return len(_value(self))

    def __contains__(self, item: Any) -> bool:
        return item in _value(self)

    def __bool__(self) -> bool:
        return bool(_value(self))

    def __str__(self) -> str:
        return str(_value(self))

    def __repr__(self) -> str:
        return repr(_value(self))

    def __format__(self, spec: str) -> str:
        return format(_value(self), spec)

    def __hash__(self) -> int:
        return hash(_value(self))

    def __eq__(self, other: Any) -> Any:
        return _value(self) == _plain(other)

    def __ne__(self, other: Any) -> Any:
        return _value(self) != _plain(other)

    def __lt__(self, other: Any) -> Any:
        return _value(self) < _plain(other)

    def __le__(self, other: Any) -> Any:
        return _value(self) <= _plain(other)

    def __gt__(self, other: Any) -> Any:
        return _value(self) > _plain(other)

    def __ge__(self, other: Any) -> Any:
        return _value(self) >= _plain(other)

    def __add__(self, other: Any) -> Any:
        return _value(self) + _plain(other)

    def __radd__(self, other: Any) -> Any:
        return _plain(other) + _value(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _value(self)(*args, **kwargs)

    def __dir__(self) -> list[str]:
        return dir(_value(self))

    def _ember_value(self) -> Any:
        return _value(self)


def _value(lazy: Lazy) -> Any:
    return object.__getattribute__(lazy, "_ember_call").result()


def _plain(value: Any) -> Any:
    return _value(value) if type(value) is Lazy else value


def call_of(value: Any) -> Call | None:
    """The :class:`Call` behind a lazy result, else ``None`` (never blocks)."""
    return object.__getattribute__(value, "_ember_call") if type(value) is Lazy else None


def resolve(value: Any) -> Any:
    """``value`` with every lazy result in it (nested in dicts, lists, tuples, model fields) read."""
    if type(value) is Lazy:
        return resolve(_value(value))
    if type(value) is dict:
        return {k: resolve(v) for k, v in value.items()} if contains_lazy(value) else value
    if type(value) in (list, tuple):
        return type(value)(resolve(v) for v in value) if contains_lazy(value) else value
    if isinstance(value, BaseModel):  # e.g. Record(answer=lazy): a model that accepts any value
        fields = dict(value)
        if any(contains_lazy(v) for v in fields.values()):
            return value.model_copy(update={k: resolve(v) for k, v in fields.items() if contains_lazy(v)})
    return value


def contains_lazy(value: Any) -> bool:
    if type(value) is Lazy:
        return True
    if type(value) is dict:
        return any(contains_lazy(v) for v in value.values())
    if type(value) in (list, tuple):
        return any(contains_lazy(v) for v in value)
    return False


def lazy_calls_in(value: Any) -> list[Call]:
    """The calls whose lazy results appear in ``value`` (the call's data dependencies)."""
    found: list[Call] = []
    if type(value) is Lazy:
        found.append(object.__getattribute__(value, "_ember_call"))
    elif type(value) is dict:
        for v in value.values():
            found.extend(lazy_calls_in(v))
    elif type(value) in (list, tuple):
        for v in value:
            found.extend(lazy_calls_in(v))
    return found
