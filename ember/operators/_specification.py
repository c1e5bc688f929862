"""Specification: the typed contract of an operator, and of the prompt it sends.

A specification names an input model, an output model (``structured_output``) and a
prompt template. Its placeholders are checked against the input model when the class is
defined, so a misspelt ``{qestion}`` fails at import time, not on the hundredth call:

>>> from ember.operators import EmberModel, Specification
>>> class QuestionInput(EmberModel):
...     question: str
>>> class QASpec(Specification):
...     input_model = QuestionInput
...     prompt_template = "Answer: {qestion}"
Traceback (most recent call last):
...
ember.operators._errors.SpecificationError: QASpec: placeholder {qestion} is not a field of QuestionInput (fields: question). Did you mean: question?

Structured answers are parsed here rather than by a provider feature, so they work the
same on every provider: :meth:`output_instructions` asks for JSON matching the schema,
:meth:`parse_output` extracts and validates it, and :meth:`repair_prompt` builds the one
follow-up request a caller may make before giving up (see :meth:`LMModule.generate`).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import string
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ember._runtime import close_matches, did_you_mean
from ember.operators._errors import InvalidInputError, InvalidOutputError, SpecificationError, StructuredOutputError
from ember.operators._model import Record

__all__ = ["Specification"]

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


class Specification(Generic[InT, OutT]):
    """Input model, structured output and prompt template of an operator.

    Define one as a subclass with class attributes (as in the seed) or inline with
    ``Specification(input_model=..., structured_output=..., prompt_template=...)``.
    """

    input_model: type[InT] | None = None
    structured_output: type[OutT] | None = None
    prompt_template: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check(cls.__name__, cls.input_model, cls.structured_output, cls.prompt_template)

    def __init__(
        self,
        *,
        input_model: type[InT] | None = None,
        structured_output: type[OutT] | None = None,
        prompt_template: str | None = None,
    ) -> None:
        if input_model is not None:
            self.input_model = input_model
        if structured_output is not None:
            self.structured_output = structured_output
        if prompt_template is not None:
            self.prompt_template = prompt_template
        self._placeholders = _check(type(self).__name__, self.input_model, self.structured_output, self.prompt_template)

    def __repr__(self) -> str:
        def name(model: type | None) -> str:
            return model.__name__ if model is not None else "None"

        return (
            f"{type(self).__name__}(input_model={name(self.input_model)}, "
            f"structured_output={name(self.structured_output)}, prompt_template={self.prompt_template!r:.60})"
        )

    # -- validation -------------------------------------------------------------------
    def validate_inputs(self, inputs: Mapping[str, Any] | BaseModel) -> InT:
        """Inputs as an instance of the input model (a :class:`Record` when there is none)."""
        model = self.input_model or Record
        return _coerce(model, inputs, InvalidInputError, "inputs")

    def validate_output(self, output: Any) -> OutT:
        """``forward``'s result as the structured output (unchanged when there is none)."""
        if self.structured_output is None:
            return output
        return _coerce(self.structured_output, output, InvalidOutputError, "output")

    # -- prompts ----------------------------------------------------------------------
    def render_prompt(self, inputs: Mapping[str, Any] | BaseModel) -> str:
        """The template filled with validated inputs."""
        if self.prompt_template is None:
            raise SpecificationError(f"{type(self).__name__} has no prompt_template to render")
        validated = self.validate_inputs(inputs)
        values = {name: getattr(validated, name) for name in self._placeholders}
        try:
            return self.prompt_template.format_map(values)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
            raise InvalidInputError(f"{type(self).__name__}: cannot render prompt: {exc}") from exc

    def input_schema(self) -> dict[str, Any]:
        """JSON schema of the input model."""
        return (self.input_model or Record).model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        """JSON schema of the structured output (a fresh copy: callers may change it)."""
        return copy.deepcopy(self._request_schema())

    def _request_schema(self) -> dict[str, Any]:
        """The schema itself, shared, for requests (which never change it): a copy per call cost
        as much CPU as the rest of a judge's prompt building."""
        return _json_schema(self._output_model())

    def output_instructions(self) -> str:
        """What to append to a prompt so the model answers with parseable JSON."""
        return _instructions(self._output_model())

    def parse_output(self, text: str, *, inputs: BaseModel | None = None) -> OutT:
        """Extract the JSON object from a model's answer and validate it.

        Accepts a bare object, one inside a code fence, or one surrounded by prose.
        ``inputs`` reach the output model's validators as ``info.context["inputs"]``, so
        an answer can be checked against its question (an index within range, say).
        Raises :class:`StructuredOutputError` with the reason.
        """
        model = self._output_model()
        try:
            data = _extract_json(text)
        except ValueError as exc:
            raise StructuredOutputError(str(exc), text=text) from None
        try:
            return model.model_validate(data, context={"inputs": inputs})
        except ValidationError as exc:
            raise StructuredOutputError(_summarize(exc), text=text) from None

    def repair_prompt(self, prompt: str, answer: str, error: StructuredOutputError) -> list[dict[str, str]]:
        """A conversation that shows the model its invalid answer and why it was rejected."""
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
            {
                "role": "user",
                "content": f"That reply was rejected: {error.reason}.\n{self.output_instructions()}",
            },
        ]

    def _output_model(self) -> type[OutT]:
        if self.structured_output is None:
            raise SpecificationError(f"{type(self).__name__} has no structured_output")
        return self.structured_output


def _check(where: str, input_model: Any, output_model: Any, template: str | None) -> tuple[str, ...]:
    """Validate a specification's parts; return the placeholder names of its template."""
    for role, model in (("input_model", input_model), ("structured_output", output_model)):
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise SpecificationError(f"{where}: {role} must be an EmberModel class, got {model!r}")
    if template is None:
        return ()
    if not isinstance(template, str):
        raise SpecificationError(f"{where}: prompt_template must be a string, got {type(template).__name__}")
    names = _placeholder_names(where, template)
    if names and input_model is None:
        raise SpecificationError(f"{where}: prompt_template has placeholders {sorted(names)} but no input_model")
    allowed = _renderable(input_model) if input_model is not None else set()
    for name in names:
        if name not in allowed:
            hint = did_you_mean(close_matches(name, sorted(allowed)))
            raise SpecificationError(
                f"{where}: placeholder {{{name}}} is not a field of {input_model.__name__} "
                f"(fields: {', '.join(input_model.model_fields)}).{hint}"
            )
    return tuple(dict.fromkeys(names))


def _placeholder_names(where: str, template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SpecificationError(
            f"{where}: prompt_template is not a valid format string ({exc}); write literal braces as {{{{ and }}}}"
        ) from None
    names = []
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not root.isidentifier():
            raise SpecificationError(f"{where}: placeholder {{{field}}} must name an input field")
        names.append(root)
        if spec:
            names.extend(_placeholder_names(where, spec))
    return names


def _renderable(model: type[BaseModel]) -> set[str]:
    """Fields, computed fields and properties: what a template may name."""
    properties = {name for klass in model.__mro__ for name, v in vars(klass).items() if isinstance(v, property)}
    return set(model.model_fields) | set(model.model_computed_fields) | properties


def _coerce(model: type[BaseModel], value: Any, error: type[Exception], what: str) -> Any:
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel):
        value = dict(value)  # shallow: keeps nested models and arrays as they are
    if not isinstance(value, Mapping):
        raise error(f"{what} for {model.__name__} must be a mapping or a model, got {type(value).__name__}")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise error(f"invalid {what} for {model.__name__}: {_summarize(exc)}") from None


def _summarize(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def _extract_json(text: str) -> Any:
    """The JSON object in ``text``: whole, fenced, or the outermost braces."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    error = "no JSON object found in the answer"
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except (json.JSONDecodeError, RecursionError) as exc:
            error = f"invalid JSON: {exc}" if candidate.startswith("{") else error
            continue
        if isinstance(data, dict):
            return data
        error = f"expected a JSON object, got {type(data).__name__}"
    raise ValueError(error)


# pydantic builds a model's JSON schema anew on every call (about 0.1 ms), and every structured
# call asks for it: built once per model class instead.
@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


@functools.cache
def _instructions(model: type[BaseModel]) -> str:
    schema = json.dumps(_json_schema(model), separators=(",", ":"))
    return f"Reply with only a JSON object (no prose, no code fence) that conforms to this JSON schema:\n{schema}"
