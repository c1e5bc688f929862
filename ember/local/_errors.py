"""The errors of the embedded model library, rooted at :class:`LocalModelError`.

``ember.local`` sits below the models layer, so it cannot raise that layer's HTTP-shaped
``ProviderError``s: a missing or unreadable GGUF file is not a provider answering badly.
These types say what went wrong in the library's own terms, carry the facts a caller needs
(the name asked for and its close matches, the token counts of a prompt that does not
fit), and the ``local`` provider (:mod:`ember.models.providers.local`) maps them onto the
models layer's typed errors. Messages are redacted like every :class:`EmberError`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ember._runtime import EmberError, close_matches, did_you_mean

__all__ = [
    "CorruptModelFileError",
    "InvalidGenerationConfigError",
    "LocalModelError",
    "ModelFileNotFoundError",
    "PromptTooLongError",
    "UnsupportedModelError",
]


class LocalModelError(EmberError):
    """Base of every error ``ember.local`` raises on purpose. ``model`` names the model or
    file concerned, when known; the message does not repeat it, so an adapter can prefix
    its own id."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        self.model = model
        super().__init__(message)


class ModelFileNotFoundError(LocalModelError):
    """No GGUF file where the model name or path pointed; the message says what to install
    or where to put the file, and ``close_matches`` lists known names like the one given."""

    def __init__(self, name: str, reason: str, *, known: Iterable[str] = ()) -> None:
        self.name = name
        self.reason = reason
        self.known = tuple(known)
        self.close_matches = close_matches(name, self.known)
        super().__init__(f"no local model {name!r}. {reason}{did_you_mean(self.close_matches)}", model=name)


class UnsupportedModelError(LocalModelError):
    """The GGUF is readable but needs something this library does not implement (another
    architecture, tokenizer or chat template family)."""


class CorruptModelFileError(LocalModelError):
    """The file is not a GGUF this library can read (bad magic or version, undecodable tensors)."""


class PromptTooLongError(LocalModelError):
    """The prompt leaves no room for a single new token in the model's context window."""

    def __init__(self, prompt_tokens: int, context_window: int, *, model: str | None = None) -> None:
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window
        super().__init__(
            f"the prompt has {prompt_tokens} tokens; the context window is {context_window}, "
            "which leaves no room to generate",
            model=model,
        )


class InvalidGenerationConfigError(LocalModelError, ValueError):
    """A sampling setting out of range; also a ``ValueError``, as a bad argument is."""
