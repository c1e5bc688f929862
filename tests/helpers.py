"""Helpers shared by several test modules (fixtures live in ``conftest.py``).

The seed's Operator System example types, as the architecture document writes them, a
scripted responder for the loopback server, and a poll for what the server records
asynchronously.
"""

import time

import jax

from ember.api.operators import EmberModel, Specification


class SummarizerInput(EmberModel):
    text: str
    max_words: int = 100


class SummarizerOutput(EmberModel):
    summary: str
    word_count: int


class SummarizerSpec(Specification):
    input_model = SummarizerInput
    structured_output = SummarizerOutput
    prompt_template = "Summarize the following text in {max_words} words or less:\n\n{text}"


class XIn(EmberModel):
    """The input of the array operators the pytree and transform tests build."""

    x: jax.Array


class YOut(EmberModel):
    y: jax.Array


def replies(*texts):
    """A loopback responder that answers with ``texts`` in order, one per request."""
    queue = list(texts)
    return lambda request: queue.pop(0)


def eventually(condition, timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (the server records asynchronously)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()
