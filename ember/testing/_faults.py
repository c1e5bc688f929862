"""Scheduled failures: the ways a real provider misbehaves, on demand and reproducibly.

A fault fires either on chosen request indexes (0-based arrival order on the server) or
at a rate. Rate draws come from a generator seeded by ``(server seed, request index)``, so
whether request 17 fails does not depend on thread timing or on what other requests did:
the same run fails the same requests every time.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from typing import Literal

FaultKind = Literal["rate_limit", "server_error", "slow", "malformed", "drop", "context_length", "stream_cut", "client_error"]


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One failure mode and when it fires. Build it with a constructor, e.g.
    ``Fault.rate_limit(retry_after=0.5, on=[0, 1])`` or ``Fault.server_error(503, rate=0.05)``.

    Every constructor takes the same schedule: ``on`` (request indexes), or ``rate`` (a
    probability per request), or neither (every request); optionally narrowed to one
    ``provider`` (``"openai"`` / ``"anthropic"``) or one ``path`` (e.g. ``"/v1/messages"``).
    When several faults match a request, the first in the server's list wins.
    """

    kind: FaultKind
    rate: float | None = None
    on: frozenset[int] | None = None
    provider: Literal["openai", "anthropic"] | None = None
    path: str | None = None
    status: int | None = None  # server_error
    retry_after: float | None = None  # rate_limit
    delay: float | None = None  # slow
    after: int | None = None  # stream_cut
    message: str | None = None  # client_error (None: a generic message)

    def __post_init__(self) -> None:
        if self.rate is not None and self.on is not None:
            raise ValueError("give a fault either `rate` or `on`, not both")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {self.rate}")
        if self.provider not in (None, "openai", "anthropic"):
            raise ValueError(f"provider must be 'openai' or 'anthropic', got {self.provider!r}")

    @classmethod
    def rate_limit(
        cls,
        retry_after: float = 1.0,
        *,
        rate: float | None = None,
        on: Iterable[int] | None = None,
        provider: Literal["openai", "anthropic"] | None = None,
        path: str | None = None,
    ) -> Fault:
        """HTTP 429 with ``retry-after`` (seconds) and ``retry-after-ms`` headers."""
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {retry_after}")
        return cls("rate_limit", rate, _indexes(on), provider, path, retry_after=retry_after)

    @classmethod
    def server_error(
        cls,
        status: int = 500,
        *,
        rate: float | None = None,
        on: Iterable[int] | None = None,
        provider: Literal["openai", "anthropic"] | None = None,
        path: str | None = None,
    ) -> Fault:
        """An HTTP 5xx in the provider's error format (529 is Anthropic's "overloaded")."""
        if not 500 <= status <= 599:
            raise ValueError(f"a server error needs a 5xx status, got {status}")
        return cls("server_error", rate, _indexes(on), provider, path, status=status)

    @classmethod
    def slow(
        cls,
        delay: float,
        *,
        rate: float | None = None,
        on: Iterable[int] | None = None,
        provider: Literal["openai", "anthropic"] | None = None,
        path: str | None = None,
    ) -> Fault:
        """A normal answer, ``delay`` seconds later than usual: set it past the client's timeout."""
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        return cls("slow", rate, _indexes(on), provider, path, delay=delay)

    @classmethod
    def malformed(
        cls,
        *,
        rate: float | None = None,
        on: Iterable[int] | None = None,
        provider: Literal["openai", "anthropic"] | None = None,
        path: str | None = None,
    ) -> Fault:
        """HTTP 200 whose JSON (or, when streaming, whose first event's JSON) is cut short."""
        return cls("malformed", rate, _indexes(on), provider, path)

    @classmethod
    def drop(
        cls,
        *,
        rate: float | None = None,
        on: Iterable[int] | None = None,
        provider: Literal["openai", "anthropic"] | None = None,
        path: str | None = None,
    ) -> Fault:
        """The connection is closed after the request is read, with no response at all."""
        return cls("drop", rate, _indexes(on), provider, path)

    @classmethod
    def client_error(
        cls,
        status: int = 400,
        message: str = "Invalid request (ember loopback fault).",
        *,
        rate: float | None = None,
        on: Iterable[int] | None = None,
        provider: Literal["openai", "anthropic"] | None = None,
        path: str | None = None,
    ) -> Fault:
        """An HTTP 4xx (400, 404, 422, ...) in the provider's error format, with ``message``:
        a deterministic rejection, which a client must not retry."""
        if not 400 <= status <= 499:
            raise ValueError(f"a client error needs a 4xx status, got {status}")
        return cls("client_error", rate, _indexes(on), provider, path, status=status, message=message)

    @classmethod
    def context_length(
        cls,
        *,
        rate: float | None = None,
        on: Iterable[int] | None = None,
        provider: Literal["openai", "anthropic"] | None = None,
        path: str | None = None,
    ) -> Fault:
        """HTTP 400 "prompt too long": OpenAI code ``context_length_exceeded``,
        Anthropic ``invalid_request_error`` "prompt is too long"."""
        return cls("context_length", rate, _indexes(on), provider, path)


    @classmethod
    def stream_cut(
        cls,
        after: int = 2,
        *,
        rate: float | None = None,
        on: Iterable[int] | None = None,
        provider: Literal["openai", "anthropic"] | None = None,
        path: str | None = None,
    ) -> Fault:
        """A streamed answer whose connection drops after its first ``after`` SSE events
        (a failure mid-stream); a request that does not stream is answered normally."""
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        return cls("stream_cut", rate, _indexes(on), provider, path, after=after)


def _indexes(on: Iterable[int] | None) -> frozenset[int] | None:
    return None if on is None else frozenset(on)


def choose_fault(faults: Sequence[Fault], index: int, provider: str, path: str, seed: int) -> Fault | None:
    """The fault that fires on request ``index``, if any."""
    rng = None
    for fault in faults:
        if fault.provider not in (None, provider) or fault.path not in (None, path):
            continue
        if fault.on is not None:
            if index in fault.on:
                return fault
        elif fault.rate is None:
            return fault
        else:
            rng = rng or random.Random(f"{seed}:{index}")
            if rng.random() < fault.rate:
                return fault
    return None
