"""Chat messages as plain mappings: what ``ember.local`` takes as a prompt.

The library sits below the models layer, so it does not know that layer's ``Message``
type; a prompt is a string (one user turn) or a sequence of ``{"role", "content"}``
mappings, which any caller can build (the ``local`` provider converts its messages to
them). Checking them here, once, lets the chat templates index ``m["role"]`` blindly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["ROLES", "Prompt", "normalize_messages"]

#: A prompt: plain text (a user turn when rendered as chat) or a list of chat messages.
Prompt = str | Sequence[Mapping[str, str]]

ROLES = ("system", "user", "assistant")


def normalize_messages(prompt: Prompt) -> tuple[dict[str, str], ...]:
    """``prompt`` as ``({"role": ..., "content": ...}, ...)``, checked.

    A malformed prompt is the caller's bug, so it raises ``TypeError`` / ``ValueError``.

    >>> normalize_messages("Hi")
    ({'role': 'user', 'content': 'Hi'},)
    """
    if isinstance(prompt, str):
        return ({"role": "user", "content": prompt},)
    if not isinstance(prompt, Sequence) or not prompt:
        raise TypeError(f"prompt must be a string or a non-empty list of messages, got {prompt!r:.80}")
    messages = []
    for i, item in enumerate(prompt):
        if not isinstance(item, Mapping) or "role" not in item or "content" not in item:
            raise TypeError(f"message {i} must be a mapping with 'role' and 'content', got {item!r:.80}")
        if item["role"] not in ROLES:
            raise ValueError(f"message {i} has unknown role {item['role']!r}")
        if not isinstance(item["content"], str):
            raise TypeError(f"message {i} content must be str, got {type(item['content']).__name__}")
        messages.append({"role": item["role"], "content": item["content"]})
    return tuple(messages)
