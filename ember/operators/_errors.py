"""Typed errors of the operator layer.

Each says which contract was broken (a specification's definition, an operator's inputs or
outputs, a model's structured answer), so callers can react without parsing messages. All
subclass :class:`~ember.models.EmberError`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ember._runtime import EmberError, close_matches, did_you_mean

__all__ = [
    "InvalidInputError",
    "InvalidOutputError",
    "OperatorNotFoundError",
    "RoutingError",
    "SpecificationError",
    "StructuredOutputError",
]

_SNIPPET_CHARS = 200


class SpecificationError(EmberError):
    """A specification is ill-formed: raised when it is defined, not when it is first used."""


class InvalidInputError(EmberError):
    """Inputs do not match an operator's input model."""


class InvalidOutputError(EmberError):
    """An operator's ``forward`` returned something its specification does not allow."""


class StructuredOutputError(InvalidOutputError):
    """A model's answer is not valid JSON for the structured output, even after repair.

    ``attempts`` counts the model calls made (the first answer plus at most one repair);
    ``text`` is the start of the last answer; ``reason`` the last parse or validation error.
    """

    def __init__(self, reason: str, *, text: str, attempts: int = 1, model_id: str | None = None) -> None:
        self.reason, self.attempts, self.model_id = reason, attempts, model_id
        self.text = text[:_SNIPPET_CHARS]
        more = "..." if len(text) > _SNIPPET_CHARS else ""
        where = f"[{model_id}] " if model_id else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{where}invalid structured output{tries}: {reason}; answer began: {self.text!r}{more}")


class RoutingError(EmberError):
    """A router's selector named a route that does not exist."""


class OperatorNotFoundError(EmberError, KeyError):
    """No operator is registered under a name."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.close_matches = close_matches(name, known)
        hint = did_you_mean(self.close_matches)
        super().__init__(f"no operator registered as {name!r}.{hint}")

    __str__ = Exception.__str__  # KeyError would quote the message
