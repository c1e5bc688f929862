"""LMModule: one model and its sampling settings -- the operators' only door to a model.

Every call goes through :class:`~ember.models.ModelService`, so retries, rate limits, the
response cache and usage accounting apply however operators are nested. Fan-out uses
``service.submit`` inside a :class:`~ember._runtime.TaskGroup`: N calls are started on
Ember's shared I/O loop at once, bounded by the shared per-model budget, never by threads;
if one fails, the group cancels the others (closing their requests) and raises that one.

:meth:`LMModule.generate` turns a :class:`Specification` into a structured answer: it asks
for JSON, parses and validates it, and on failure makes exactly one repair call that shows
the model its answer and the error, then raises :class:`StructuredOutputError`.

Each method has an async twin (:meth:`LMModule.ainvoke`, :meth:`~LMModule.acall`,
:meth:`~LMModule.agenerate`, :meth:`~LMModule.agenerate_all`) for operators' ``aforward``:
the same requests, prompts and parsing (shared, see :class:`_Structured`), awaited on the
caller's loop; on Ember's I/O loop the call runs there directly, with no thread and no
crossing. Async fan-out uses :func:`~ember.operators._gather.gather`: a failure cancels
the siblings there too.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from ember._runtime import TaskGroup
from ember.operators._errors import StructuredOutputError
from ember.operators._gather import gather
from ember.operators._operator import Operator
from ember.operators._specification import Specification

if TYPE_CHECKING:
    from ember.models import ModelResponse, ModelService

__all__ = ["LMModule", "LMOperator"]

InT = TypeVar("InT")
OutT = TypeVar("OutT")
Prompt = str | Sequence[Mapping[str, str]]


@dataclasses.dataclass(frozen=True)
class LMModule:
    """A model id with sampling settings; ``model_service=None`` means the app context's.

    Offline, the loopback server stands in for OpenAI:

    >>> import os
    >>> from ember.testing import LoopbackServer
    >>> server = LoopbackServer().start()
    >>> os.environ.update(server.environ())
    >>> lm = LMModule("openai:gpt-4o", temperature=0.7)
    >>> lm("What is 6 * 7?")
    '42'
    >>> server.close()
    """

    model_name: str
    temperature: float | None = None
    max_tokens: int | None = None
    model_service: ModelService | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ValueError(f"model_name must be a non-empty string, got {self.model_name!r}")

    @property
    def service(self) -> ModelService:
        """The service calls go through, resolved at call time."""
        if self.model_service is not None:
            return self.model_service
        from ember._context import get_app_context  # the context is built on first use

        return get_app_context().model_service

    def _params(self, sample_index: int, json_schema: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "sample_index": sample_index,
                "json_schema": json_schema}  # fmt: skip

    def submit(
        self, prompt: Prompt, *, sample_index: int = 0, json_schema: Mapping[str, Any] | None = None
    ) -> concurrent.futures.Future[ModelResponse]:
        """Start one call and return its future at once (for fan-out).

        ``json_schema`` asks the provider to constrain the answer (native JSON modes, the
        local model's guided decoding); validation and repair stay with the specification.
        """
        return self.service.submit(self.model_name, prompt, **self._params(sample_index, json_schema))

    async def ainvoke(
        self, prompt: Prompt, *, sample_index: int = 0, json_schema: Mapping[str, Any] | None = None
    ) -> ModelResponse:
        """Await one call: :meth:`submit`'s request, from async code (fan out with ``gather``)."""
        return await self.service.ainvoke_model(self.model_name, prompt, **self._params(sample_index, json_schema))

    def __call__(self, prompt: Prompt, *, sample_index: int = 0) -> str:
        """Call the model and return the answer's text."""
        return self.service.invoke_model(self.model_name, prompt, **self._params(sample_index, None)).text

    async def acall(self, prompt: Prompt, *, sample_index: int = 0) -> str:
        """Await the model's answer's text (the async :meth:`__call__`)."""
        return (await self.ainvoke(prompt, sample_index=sample_index)).text

    def generate(self, spec: Specification[Any, OutT], inputs: Mapping[str, Any] | BaseModel) -> OutT:
        """The structured answer to ``spec``'s prompt for ``inputs``."""
        return self.generate_all(spec, [inputs])[0]

    async def agenerate(self, spec: Specification[Any, OutT], inputs: Mapping[str, Any] | BaseModel) -> OutT:
        """Await the structured answer to ``spec``'s prompt for ``inputs``."""
        return (await self.agenerate_all(spec, [inputs]))[0]

    def generate_all(
        self, spec: Specification[Any, OutT], batch: Sequence[Mapping[str, Any] | BaseModel]
    ) -> list[OutT]:
        """Structured answers for many inputs: all first calls, then all repairs, concurrently."""
        job = _Structured(spec, batch, self.model_name)
        with TaskGroup():
            firsts = [self.submit(p, json_schema=job.schema) for p in job.prompts]
        repairs: dict[int, concurrent.futures.Future[ModelResponse]] = {}
        with TaskGroup():
            for i, first in enumerate(firsts):
                repair = job.first(i, first.result().text)
                if repair is not None:
                    repairs[i] = self.submit(repair, json_schema=job.schema)
        for i, response in repairs.items():
            job.second(i, response.result().text)
        return job.results

    async def agenerate_all(
        self, spec: Specification[Any, OutT], batch: Sequence[Mapping[str, Any] | BaseModel]
    ) -> list[OutT]:
        """Await structured answers for many inputs: all first calls, then all repairs, concurrently."""
        job = _Structured(spec, batch, self.model_name)
        firsts = await gather(self.ainvoke(p, json_schema=job.schema) for p in job.prompts)
        repairs = {i: repair for i, first in enumerate(firsts) if (repair := job.first(i, first.text)) is not None}
        if repairs:
            seconds = await gather(self.ainvoke(p, json_schema=job.schema) for p in repairs.values())
            for i, response in zip(repairs, seconds):
                job.second(i, response.text)
        return job.results


class _Structured:
    """One batch of structured generation without the waiting: prompts, parsing, repairs.

    The sync and async methods above differ only in how they wait for answers; what they
    ask and how they read the answers is here, once.
    """

    def __init__(self, spec: Specification[Any, Any], batch: Sequence[Mapping[str, Any] | BaseModel], model: str) -> None:
        self.spec, self.model = spec, model
        self.validated = [spec.validate_inputs(inputs) for inputs in batch]
        self.prompts = [f"{spec.render_prompt(inputs)}\n\n{spec.output_instructions()}" for inputs in self.validated]
        self.schema = spec._request_schema()
        self.results: list[Any] = [None] * len(self.validated)

    def first(self, i: int, answer: str) -> str | None:
        """Read the first answer to item ``i``; the repair prompt to send if it did not parse."""
        try:
            self.results[i] = self.spec.parse_output(answer, inputs=self.validated[i])
        except StructuredOutputError as error:
            return self.spec.repair_prompt(self.prompts[i], answer, error)
        return None

    def second(self, i: int, answer: str) -> None:
        """Read the repaired answer to item ``i``; raise if it still does not parse."""
        try:
            self.results[i] = self.spec.parse_output(answer, inputs=self.validated[i])
        except StructuredOutputError as error:
            raise StructuredOutputError(error.reason, text=answer, attempts=2, model_id=self.model) from None


class LMOperator(Operator[InT, OutT]):
    """Base of operators backed by one model: the four fields below, and :attr:`lm`.

    An LLM operator for a specification is then three lines::

        class Summarizer(LMOperator[SummarizerInput, SummarizerOutput]):
            specification = SummarizerSpec()

            def forward(self, *, inputs):
                return self.lm.generate(self.specification, inputs)

        Summarizer("openai:gpt-4o", temperature=0.2)(text=article, max_words=50).summary
    """

    model_name: str
    temperature: float = 0.0
    max_tokens: int | None = None
    model_service: ModelService | None = None

    @property
    def lm(self) -> LMModule:
        return LMModule(self.model_name, self.temperature, self.max_tokens, self.model_service)
