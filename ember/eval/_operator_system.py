"""NON operators as evaluated systems, with each item's model usage attributed to it.

Operators are synchronous (an ensemble submits its calls to the shared I/O loop and waits
on the futures), so each item in flight occupies one thread that only waits; the calls
themselves are native async on the I/O loop and share its one budget.

Attribution: an item's cost is the sum over the calls its operator made. Operators built
here from compact notation get a :class:`TrackedService` — the real service, plus a
context-local tracker that the item's thread (and any branch thread, which copies the
context) adds each call's future to. An operator built elsewhere calls whatever service
it was given, so its items' cost is reported as unknown rather than guessed.
"""

from __future__ import annotations

import ast
import contextvars
import re
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ember.eval._systems import SystemFailure, SystemOutput
from ember.models import ModelResponse, UsageStats

if TYPE_CHECKING:
    from ember.models import ModelService

__all__ = ["OperatorSystem", "TrackedService", "is_compact_notation", "is_operator", "parse_notation"]

_NODE = re.compile(r"^\d+:(E|J|S|B|V|MC)(:|$)")
_ANSWER_FIELDS = ("final_answer", "revised_answer", "answer", "text")
_tracker: contextvars.ContextVar[_Tracker | None] = contextvars.ContextVar("ember_eval_tracker", default=None)


def is_compact_notation(text: str) -> bool:
    """``"5:E:model:0.7"``, ``"5:E:m:0.7,1:MC"`` or a list literal ``'["5:E:m:0.7", "1:MC"]'``."""
    text = text.strip()
    return text.startswith("[") or bool(_NODE.match(text))


def parse_notation(text: str) -> Any:
    """The notation object for ``build_graph``: a list literal as is, ``a,b`` as ``[a, b]``."""
    text = text.strip()
    if text.startswith("["):
        return ast.literal_eval(text)
    nodes = [node.strip() for node in text.split(",")]
    return nodes[0] if len(nodes) == 1 else nodes


def is_operator(value: Any) -> bool:
    """Whether ``value`` is an Ember operator (without importing the operators, and so JAX, to find out)."""
    operators = sys.modules.get("ember.operators")
    return operators is not None and isinstance(value, operators.Operator)


class _Tracker:
    """The futures of one item's calls, summed once the operator has returned.

    Not a done-callback: a thread waiting on a future can wake before the future's
    callbacks have run, so a callback-fed sum could miss the last call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: list[Any] = []

    def add(self, future: Any) -> None:
        with self._lock:
            self._futures.append(future)

    def totals(self) -> tuple[UsageStats, int, int]:
        """Usage, calls and attempts over the calls that finished (cancelled ones were never made)."""
        usage, calls, attempts = UsageStats(), 0, 0
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            if not future.done() or future.cancelled():
                continue
            calls += 1
            error = future.exception()
            if error is None:
                response: ModelResponse = future.result()
                usage, attempts = usage + response.usage, attempts + max(response.attempts, 1)
            else:
                attempts += getattr(error, "attempts", 1)
        return usage, calls, attempts


class TrackedService:
    """A :class:`ModelService` whose calls also count toward the current item's tracker."""

    def __init__(self, service: ModelService) -> None:
        self._service = service

    def submit(self, model_id: str, prompt: Any, **params: Any) -> Any:
        future = self._service.submit(model_id, prompt, **params)
        tracker = _tracker.get()
        if tracker is not None:
            tracker.add(future)
        return future

    def invoke_model(self, model_id: str, prompt: Any, **params: Any) -> ModelResponse:
        return self.submit(model_id, prompt, **params).result()

    __call__ = invoke_model

    def __getattr__(self, name: str) -> Any:  # stats, registry, usage_service, ...
        return getattr(self._service, name)


def _model_services(node: Any, seen: set[int]) -> Iterator[Any]:
    """The ``model_service`` of every model-backed part of an operator tree."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, (list, tuple)):
        for child in node:
            yield from _model_services(child, seen)
        return
    operators = sys.modules["ember.operators"]
    if not isinstance(node, (operators.Operator, operators.LMModule)):
        return
    if hasattr(node, "model_name") and hasattr(node, "model_service"):
        yield node.model_service
    for value in vars(node).values():
        yield from _model_services(value, seen)


def _answer(output: Any) -> str:
    if isinstance(output, str):
        return output
    for field in _ANSWER_FIELDS:
        value = getattr(output, field, None)
        if isinstance(value, str):
            return value
    responses = getattr(output, "responses", None)
    if isinstance(responses, list) and responses:
        return str(responses[0])
    raise TypeError(f"operator output has no answer field ({', '.join(_ANSWER_FIELDS)}) or responses: {output!r:.120}")


class OperatorSystem:
    """Runs ``operator(inputs={"query": prompt})`` per item; the answer is its ``final_answer``.

    Costs are known when every model-backed part of the operator calls a
    :class:`TrackedService` (as operators built from notation here do); otherwise each
    item's cost is reported as unknown.
    """

    def __init__(self, operator: Any, *, name: str | None = None, spec: str | None = None) -> None:
        self.operator = operator
        self.name = name or type(operator).__name__
        self.spec = spec or f"operator:{operator!r}"
        self.tracked = all(isinstance(s, TrackedService) for s in _model_services(operator, set()))

    @classmethod
    def from_notation(cls, notation: str, *, name: str | None = None, service: ModelService | None = None) -> OperatorSystem:
        """Build compact notation (see :func:`ember.non.build_graph`) on a tracked service."""
        from ember.non import build_graph

        if service is None:
            from ember.core.app_context import get_app_context

            service = get_app_context().model_service
        operator = build_graph(parse_notation(notation), model_service=TrackedService(service))
        return cls(operator, name=name or notation, spec=f"non:{notation}")

    def _call(self, prompt: str) -> SystemOutput:
        from ember.operators import InvalidOutputError

        tracker = _Tracker()
        token = _tracker.set(tracker)
        try:
            text = _answer(self.operator(inputs={"query": prompt}))
        except InvalidOutputError as error:  # a model's output was unusable: this item failed
            usage, calls, attempts = self._totals(tracker)
            raise SystemFailure(str(error), attempts=attempts, calls=calls, usage=usage) from error
        finally:
            _tracker.reset(token)
        usage, calls, attempts = self._totals(tracker)
        return SystemOutput(text, usage, calls, attempts)

    def _totals(self, tracker: _Tracker) -> tuple[UsageStats, int, int]:
        usage, calls, attempts = tracker.totals()
        if not self.tracked:  # some calls went to a service we cannot see: the cost is unknown
            usage = UsageStats(usage.input_tokens, usage.output_tokens, None)
        return usage, calls, attempts

    async def arun(self, prompt: str) -> SystemOutput:
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self._call, prompt)

    def __repr__(self) -> str:
        return f"OperatorSystem({self.name!r})"
