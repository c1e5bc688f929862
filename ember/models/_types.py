"""Requests and responses: what crosses the line between the service and a provider.

A :class:`ChatRequest` is normalised once by :class:`~ember.models.ModelService` (prompt
string or message list, system prompt, sampling parameters), so a provider adapter only
translates it to its wire format. A :class:`ModelResponse` is what every provider returns
to the user, remote or local, with usage and cost attached by the service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from ember._runtime import UsageStats

__all__ = ["Message", "ChatRequest", "ProviderResult", "UsageStats", "ModelResponse", "normalize_messages"]

Role = Literal["system", "user", "assistant"]
#: How a structured answer is asked for: a named JSON schema, JSON mode (with the schema
#: beside it where the server takes one), or only through the prompt.
StructuredOutput = Literal["json_schema", "json_object", "none"]
#: Every form, best first: negotiation only ever moves down this list.
STRUCTURED_OUTPUT_FORMS: tuple[StructuredOutput, ...] = ("json_schema", "json_object", "none")


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


def normalize_messages(
    prompt: str | Sequence[Mapping[str, str] | Message], system: str | None = None
) -> tuple[Message, ...]:
    """Turn a prompt string or a list of ``{"role", "content"}`` dicts into messages.

    >>> normalize_messages("Hi", system="Be brief")
    (Message(role='system', content='Be brief'), Message(role='user', content='Hi'))
    """
    if isinstance(prompt, str):
        messages = [Message("user", prompt)]
    elif isinstance(prompt, Sequence) and prompt:
        messages = []
        for i, item in enumerate(prompt):
            if isinstance(item, Message):
                messages.append(item)
                continue
            if not isinstance(item, Mapping) or "role" not in item or "content" not in item:
                raise TypeError(f"message {i} must be a mapping with 'role' and 'content', got {type(item).__name__}")
            if item["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"message {i} has unknown role {item['role']!r}")
            if not isinstance(item["content"], str):
                raise TypeError(f"message {i} content must be str, got {type(item['content']).__name__}")
            messages.append(Message(item["role"], item["content"]))
    else:
        got = "an empty list" if isinstance(prompt, Sequence) else type(prompt).__name__
        raise TypeError(f"prompt must be a string or a non-empty list of messages; got {got}")
    if system is not None:
        if messages[0].role == "system":
            raise ValueError("system prompt given twice: as system= and as the first message")
        messages.insert(0, Message("system", system))
    return tuple(messages)


@dataclasses.dataclass(frozen=True, slots=True)
class ChatRequest:
    """One normalised chat call, as a provider adapter sees it.

    ``sample_index`` tells repeated samples of the same prompt apart (cache key, and the
    local model's per-sample seed); providers without a seed parameter ignore it.
    """

    model_name: str
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    top_p: float | None = None
    response_format: type[BaseModel] | None = None
    #: Constrain the answer to this JSON schema without validating it here (callers that
    #: validate and repair themselves, like operators' specifications, pass this).
    json_schema: Mapping[str, Any] | None = None
    sample_index: int = 0
    timeout: float = 60.0
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The full ``provider:name`` id, for error messages.
    model_id: str = ""
    #: The form in which to ask for ``output_schema`` (set by the service's negotiation;
    #: ``None``: the adapter's own declared form). Adapters with one form ignore it.
    structured_output: StructuredOutput | None = None

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    @property
    def output_schema(self) -> Mapping[str, Any] | None:
        """The JSON schema the answer must follow, from ``json_schema`` or ``response_format``."""
        if self.json_schema is not None:
            return self.json_schema
        return self.response_format.model_json_schema() if self.response_format is not None else None

    @property
    def turns(self) -> tuple[Message, ...]:
        """The messages after the system prompt."""
        return self.messages[1:] if self.system is not None else self.messages


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderResult:
    """What an adapter hands back: text and token counts, before pricing."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str | None = None
    raw_model: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ModelResponse:
    """The answer to one call: ``str(response)`` is its text.

    ``parsed`` holds the validated pydantic object when structured output was requested.
    ``cached`` is true when the answer came from the response cache (no tokens billed).
    ``repaired`` is true when the first answer failed validation against ``response_format``
    and this one came from the one repair request (its usage and attempts are included): in
    a stream, the deltas were that first answer, so ``text`` differs from their
    concatenation exactly when ``repaired`` is true.
    """

    text: str
    model_id: str
    usage: UsageStats
    latency_s: float
    finish_reason: str | None = None
    attempts: int = 1
    cached: bool = False
    parsed: BaseModel | None = None
    repaired: bool = False

    def __str__(self) -> str:
        return self.text

    @property
    def data(self) -> str:
        """Alias of ``text`` for code written against upstream Ember."""
        return self.text
