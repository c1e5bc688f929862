"""NON operators as evaluated systems, with each item's model usage attributed to it.

Operators are synchronous (an ensemble submits its calls to the shared I/O loop and waits
on the futures), so each item in flight occupies one thread that only waits; the calls
themselves are native async on the I/O loop and share its one budget.

Attribution: an item's cost is the sum over the calls its operator made. Operators built
here from compact notation get a :class:`TrackedService` — the real service, plus a
context-local tracker that the item's thread (and any branch thread, which copies the
context) adds each finished call to. An operator built elsewhere calls whatever service
it was given, so its items' cost is reported as unknown rather than guessed.
"""

from __future__ import annotations

import ast
import contextvars
import re
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
    from ember.operators import Operator

    return isinstance(value, Operator)


class _Tracker:
    """Usage of one item's calls; callbacks arrive on the I/O loop's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.usage, self.calls, self.attempts = UsageStats(), 0, 0

    def add(self, future: Any) -> None:
        if future.cancelled():
            return
        error = future.exception()
        with self._lock:
            self.calls += 1
            if error is None:
                response: ModelResponse = future.result()
                self.usage, self.attempts = self.usage + response.usage, self.attempts + max(response.attempts, 1)
            else:
                self.attempts += getattr(error, "attempts", 1)


class TrackedService:
    """A :class:`ModelService` whose calls also count toward the current item's tracker."""

    def __init__(self, service: ModelService) -> None:
        self._service = service

    def submit(self, model_id: str, prompt: Any, **params: Any) -> Any:
        future = self._service.submit(model_id, prompt, **params)
        tracker = _tracker.get()
        if tracker is not None:
            future.add_done_callback(tracker.add)
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
    if not (is_operator(node) or type(node).__name__ == "LMModule"):
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
            raise SystemFailure(str(error), attempts=tracker.attempts, calls=tracker.calls, usage=self._usage(tracker)) from error
        finally:
            _tracker.reset(token)
        return SystemOutput(text, self._usage(tracker), tracker.calls, tracker.attempts)

    def _usage(self, tracker: _Tracker) -> UsageStats:
        if self.tracked:
            return tracker.usage
        return UsageStats(tracker.usage.input_tokens, tracker.usage.output_tokens, None)

    async def arun(self, prompt: str) -> SystemOutput:
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self._call, prompt)

    def __repr__(self) -> str:
        return f"OperatorSystem({self.name!r})"
