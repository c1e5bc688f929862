"""What the loopback server answers, and how it counts tokens.

Tokens are whitespace-separated words, so a test can compute usage (and so cost) exactly:
prompt tokens are the words of every message's text, the system prompt included; completion
tokens are the words of the answer after ``stop`` and ``max_tokens`` have cut it.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Literal

from ember.testing._request import LoopbackRequest

Responder = Callable[[LoopbackRequest], str]
"""Scripts the server: the answer text for one request (before ``stop``/``max_tokens``)."""

_WORD = re.compile(r"\S+")
_ARITHMETIC = re.compile(
    r"\s*(?:(?:what\s+is|what's|compute|calculate|evaluate)\s+)?"
    r"(?P<expression>-?\d+(?:\.\d+)?(?:\s*[-+*/x×]\s*-?\d+(?:\.\d+)?)+)\s*[?=.]?\s*",
    re.IGNORECASE,
)
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def count_tokens(text: str) -> int:
    """The loopback server's token count: whitespace-separated words."""
    return len(text.split())


def default_responder(request: LoopbackRequest) -> str:
    """Answer a last user message that is simple arithmetic, else echo it, naming the model.

    ``"What is 17 + 25?"`` (or ``"17+25"``, ``"calculate 6 x 7"``) is answered ``"42"``: exact
    rational arithmetic with ``+ - * / x``, so pipelines can be checked for right answers.
    Anything else is answered ``[MODEL] You said: "LAST USER MESSAGE"``, deterministic and
    traceable to the request that produced it.
    """
    question = request.last_user_message
    match = _ARITHMETIC.fullmatch(question)
    if match:
        try:
            value = _evaluate(ast.parse(match["expression"].replace("×", "*").replace("x", "*"), mode="eval").body)
        except ZeroDivisionError:
            pass
        else:
            return str(value.numerator) if value.denominator == 1 else format(float(value), ".10g")
    return f'[{request.model}] You said: "{question}"'


def _evaluate(node: ast.expr) -> Fraction:
    if isinstance(node, ast.BinOp):
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp):
        return -_evaluate(node.operand)
    return Fraction(str(node.value))  # the regex admits only numbers, + - * / and unary minus


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
    words = list(_WORD.finditer(text))
    if request.max_tokens is not None and len(words) > request.max_tokens:
        text = text[: words[request.max_tokens - 1].end()] if request.max_tokens else ""
        finish, hit, words = "length", None, words[: request.max_tokens]
    prompt_tokens = sum(count_tokens(m["content"]) for m in request.messages)
    return Completion(text, finish, hit, prompt_tokens, len(words))
