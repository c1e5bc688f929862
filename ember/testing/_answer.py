"""What the loopback server answers, and how it counts tokens.

Tokens are whitespace-separated words, so a test can compute usage (and so cost) exactly:
prompt tokens are the words of every message's text, the system prompt included; completion
tokens are the words of the answer after ``stop`` and ``max_tokens`` have cut it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal

from ember.testing._request import LoopbackRequest

Responder = Callable[[LoopbackRequest], str]
"""Scripts the server: the answer text for one request (before ``stop``/``max_tokens``)."""

_WORD = re.compile(r"\S+")
_NUMBER = r"-?\d+(?:\.\d+)?"
_ARITHMETIC = re.compile(
    rf"\s*(?:(?:what\s+is|what's|compute|calculate|evaluate)\s+)?"
    rf"(?P<first>{_NUMBER})(?P<rest>(?:\s*[-+*/x]\s*{_NUMBER})+)\s*[?=.]?\s*",
    re.IGNORECASE,
)
_OPERATION = re.compile(rf"\s*([-+*/x])\s*({_NUMBER})")


def count_tokens(text: str) -> int:
    """The loopback server's token count: whitespace-separated words."""
    return len(text.split())


def default_responder(request: LoopbackRequest) -> str:
    """Answer a last user message that is simple arithmetic, else echo it, naming the model.

    ``"What is 17 + 25?"`` (or ``"17+25"``, ``"calculate 6 x 7"``) is answered ``"42"``: exact
    arithmetic with ``+ - * / x`` and the usual precedence, so pipelines can be checked for
    right answers. Anything else is answered ``[MODEL] You said: "LAST USER MESSAGE"``,
    deterministic and traceable to the request that produced it.

    A request that carries a JSON schema (:attr:`LoopbackRequest.output_schema`: a
    ``json_schema`` or ``json_object`` + ``schema`` response format, Anthropic's
    ``output_config``) is answered with a JSON object valid against it (see :func:`schema_instance`),
    as a server that constrains its output would.
    """
    question = request.last_user_message
    match = _ARITHMETIC.fullmatch(question)
    answer = match and _calculate(match["first"], _OPERATION.findall(match["rest"]))
    text = answer or f'[{request.model}] You said: "{question}"'
    schema = request.output_schema
    if schema is not None:
        return json.dumps(schema_instance(schema, text, schema))
    return text


def schema_instance(schema: Any, text: str, root: Any = None) -> Any:
    """A small value valid against ``schema`` (the subset pydantic emits), strings set to ``text``.

    Objects get their required properties (all of them when none are listed); ``enum`` and
    ``const`` take their first value; ``$ref`` is followed within ``root``; ``anyOf``/``oneOf``
    take the first branch that is not ``null``; numbers are ``1`` (or their ``minimum``), booleans ``true``, arrays
    one item (when ``minItems`` asks for it, that many).
    """
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return text
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return schema_instance(target, text, root)
    for key in ("anyOf", "oneOf", "allOf"):
        branches = [b for b in schema.get(key) or () if not (isinstance(b, dict) and b.get("type") == "null")]
        if branches:
            return schema_instance(branches[0], text, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        names = schema.get("required") or list(properties)
        return {name: schema_instance(properties.get(name, {}), text, root) for name in names}
    if kind == "array":
        return [schema_instance(schema.get("items", {}), text, root) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def _calculate(first: str, operations: list[tuple[str, str]]) -> str | None:
    """Exact value of ``first (op number)...``, or None on division by zero."""
    total, term = 0, _number(first)
    for op, text in operations:
        value = _number(text)
        if op in "+-":
            total, term = total + term, value if op == "+" else -value
        elif op == "/":
            if value == 0:
                return None
            term = Fraction(term) / value
        else:
            term *= value
    total += term
    if isinstance(total, Fraction) and total.denominator != 1:
        return format(float(total), ".10g")
    return str(int(total))


def _number(text: str) -> int | Fraction:
    return Fraction(text) if "." in text else int(text)


@dataclasses.dataclass(frozen=True, slots=True)
class Completion:
    """An answer cut to the request's limits. ``finish`` is provider-neutral:
    ``"end"`` (natural end), ``"stop_sequence"`` or ``"length"``."""

    text: str
    finish: Literal["end", "stop_sequence", "length"]
    stop_sequence: str | None
    prompt_tokens: int
    completion_tokens: int


def complete(request: LoopbackRequest, responder: Responder) -> Completion:
    """Run ``responder`` and apply ``stop`` then ``max_tokens``, as a model generating left to right would."""
    text = responder(request)
    if not isinstance(text, str):
        raise TypeError(f"responder must return str, got {type(text).__name__}")
    finish, hit = "end", None
    cuts = [(text.find(s), s) for s in request.stop if s and s in text]
    if cuts:
        position, hit = min(cuts)
        text, finish = text[:position], "stop_sequence"
    tokens, limit = count_tokens(text), request.max_tokens
    if limit is not None and tokens > limit:
        ends = [word.end() for word in itertools.islice(_WORD.finditer(text), limit)]
        text, tokens, finish, hit = text[: ends[-1] if ends else 0], limit, "length", None
    prompt_tokens = sum(count_tokens(m["content"]) for m in request.messages)
    return Completion(text, finish, hit, prompt_tokens, tokens)
