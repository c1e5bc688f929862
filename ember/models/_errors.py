"""Typed errors of the models layer.

Every failure a caller can meet on the call path is one of these, so that code above
(operators, evaluation) can tell "retry later" from "fix your config" without parsing
strings. Messages never carry credentials: they pass through :func:`ember._runtime.redact`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ember._runtime import EmberError, close_matches, did_you_mean, redact

__all__ = [
    "EmberError",
    "ModelError",
    "ModelNotFoundError",
    "ProviderNotFoundError",
    "MissingCredentialsError",
    "InvalidCredentialsError",
    "InvalidRequestError",
    "ProviderError",
    "RateLimitError",
    "ProviderTimeoutError",
    "ProviderConnectionError",
    "ContextLengthExceededError",
    "MalformedResponseError",
    "StreamInterruptedError",
    "BudgetExceededError",
]

_SNIPPET_CHARS = 200


class ModelError(EmberError):
    """A failure tied to one model id."""

    retryable: bool = False

    def __init__(self, message: str, *, model_id: str | None = None) -> None:
        self.model_id = model_id
        prefix = f"[{model_id}] " if model_id else ""
        super().__init__(prefix + message)


class ModelNotFoundError(ModelError, KeyError):
    """The id names no registered model and no provider could resolve it."""

    def __init__(self, model_id: str, known: Iterable[str] = (), *, reason: str = "") -> None:
        self.close_matches = close_matches(model_id, known)
        hint = did_you_mean(self.close_matches)
        detail = f" {reason}" if reason else ""
        super().__init__(f"model {model_id!r} is not registered.{detail}{hint}", model_id=model_id)

    __str__ = Exception.__str__  # KeyError would quote the message


class ProviderNotFoundError(ModelNotFoundError):
    """The provider part of a ``provider:name`` id is unknown."""

    def __init__(self, model_id: str, provider: str, known_providers: Iterable[str]) -> None:
        known = sorted(known_providers)
        super().__init__(
            model_id,
            reason=f"Unknown provider {provider!r}; known providers: {', '.join(known)}.",
        )
        self.close_matches = close_matches(provider, known)
        if self.close_matches:
            self.args = (self.args[0] + did_you_mean(self.close_matches),)


class MissingCredentialsError(ModelError):
    """No API key for a provider: names where one is looked for, never a value."""

    def __init__(self, provider: str, env_var: str, config_key: str, *, model_id: str | None = None):
        self.provider, self.env_var, self.config_key = provider, env_var, config_key
        super().__init__(
            f"no API key for provider {provider!r}. Set the environment variable {env_var} "
            f"or the config key {config_key}.",
            model_id=model_id,
        )


class InvalidCredentialsError(MissingCredentialsError):
    """An API key no server could accept (whitespace or control characters inside it).

    Names where the key was read (``env_var`` or ``config_key``), never its value. A
    subclass of :class:`MissingCredentialsError`, so code that handles "fix your key"
    handles this too.
    """

    def __init__(
        self, provider: str, env_var: str | None, config_key: str, problem: str, *, model_id: str | None = None
    ) -> None:
        self.provider, self.env_var, self.config_key, self.problem = provider, env_var, config_key, problem
        where = f"environment variable {env_var}" if env_var else f"config key {config_key}"
        ModelError.__init__(
            self,
            f"the API key for provider {provider!r} read from {where} {problem}. A key is one token: "
            "no spaces, tabs, line breaks or other control characters inside it.",
            model_id=model_id,
        )


class InvalidRequestError(ModelError, ValueError, TypeError):
    """A request that can never be sent (a bad parameter), refused before any call is made.

    Never retried. ``parameter`` names the offending argument; the message gives the
    expected form and the type of what was passed, never the value itself. Also a
    ``TypeError``, so code written for Python's "bad argument" errors catches it.
    """

    def __init__(self, parameter: str, problem: str, *, model_id: str | None = None) -> None:
        self.parameter = parameter
        super().__init__(f"invalid request: {parameter} {problem}", model_id=model_id)


class ProviderError(ModelError):
    """The provider answered with an error (or not at all) after the retries we allow."""

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        status_code: int | None = None,
        attempts: int = 1,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.attempts = attempts
        self.retryable = retryable
        self.retry_after = retry_after
        status = f" (HTTP {status_code})" if status_code else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{message}{status}{tries}", model_id=model_id)


class RateLimitError(ProviderError):
    """HTTP 429 that outlived every retry (or the local RPM/TPM budget could never fit it)."""


class ProviderTimeoutError(ProviderError):
    """The request did not complete within its timeout."""


class ProviderConnectionError(ProviderError):
    """The connection failed or dropped before a response arrived."""


class ContextLengthExceededError(ProviderError):
    """The prompt plus ``max_tokens`` does not fit the model's context window."""


class MalformedResponseError(ProviderError):
    """The provider answered with something we cannot parse; carries a truncated snippet."""

    def __init__(self, message: str, *, snippet: str = "", **kwargs) -> None:
        self.snippet = redact(snippet[:_SNIPPET_CHARS])
        more = "..." if len(snippet) > _SNIPPET_CHARS else ""
        super().__init__(f"{message}; response began: {self.snippet!r}{more}", **kwargs)


class StreamInterruptedError(ProviderError):
    """A stream failed after its first delta: never retried (the caller has seen text).

    ``partial_text`` is what had been streamed; the cause is chained (``__cause__``).
    """

    def __init__(self, message: str, *, partial_text: str = "", **kwargs) -> None:
        self.partial_text = partial_text
        super().__init__(message, **kwargs)


class BudgetExceededError(EmberError):
    """A cost budget was reached; no new calls are started."""
