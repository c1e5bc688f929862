"""The typed errors of the transforms (``vmap``, ``pmap``, ``mesh_sharded``, ``llm_callback``).

All derive from :class:`TransformError`, so ``except TransformError`` catches every misuse
of a transform, and each message names the field, axis or device it is about.
"""

from __future__ import annotations

from collections.abc import Sequence

from ember._runtime import EmberError

__all__ = [
    "BatchAxisError",
    "CallbackInputError",
    "CallbackOutputError",
    "NonDifferentiableError",
    "NotTraceableError",
    "PromptIdError",
    "TransformError",
    "UnknownDeviceError",
]


class TransformError(EmberError):
    """Base of every error raised by Ember's transforms."""


class BatchAxisError(TransformError, ValueError):
    """Inputs whose batch axes disagree, or an ``in_axes`` that does not fit the inputs."""


class NotTraceableError(TransformError, TypeError):
    """An operator handed to ``jax.vmap``/``jax.jit`` needed concrete values (it made a host
    call, or branched on an array) while being traced."""


class NonDifferentiableError(TransformError, TypeError):
    """``jax.grad`` (or any JVP) reached an LLM call: answers from a model have no derivative."""


class UnknownDeviceError(TransformError, ValueError):
    """A device name (``"gpu:0"``, ``"cpu:3"``) that names no device of this process."""

    def __init__(self, name: str, available: Sequence[str], reason: str = "no such device") -> None:
        self.name, self.available = name, tuple(available)
        super().__init__(f"device {name!r}: {reason}. Devices here: {', '.join(self.available)}")


class CallbackInputError(TransformError, ValueError):
    """Arrays handed to a host callback (``llm_callback``, ``generate_callback``) that cannot
    name a prompt: a non-integral id, a prompt length outside the token array."""


class PromptIdError(CallbackInputError, IndexError):
    """An id that names no entry of its :class:`~ember.xcs._callback.PromptTable`."""

    def __init__(self, prompt_id: object, size: int) -> None:
        self.prompt_id, self.size = prompt_id, size
        super().__init__(f"prompt id {prompt_id!r} is out of range: the table has {size} prompts (ids 0..{size - 1})")


class CallbackOutputError(TransformError, ValueError):
    """A model's answer that ``parse`` could not turn into the callback's declared result."""
