"""Mapping the official SDKs' exceptions onto Ember's typed errors.

The ``openai`` and ``anthropic`` SDKs share one exception design (``APIStatusError`` with a
status code and the HTTP response, ``APITimeoutError``, ``APIConnectionError``), so one
function serves both. Transient failures come back ``retryable`` with the server's
Retry-After, for :class:`~ember.models.ModelService` to retry.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from types import ModuleType

from ember.models._errors import (
    ContextLengthExceededError,
    MalformedResponseError,
    ModelError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
)

__all__ = ["map_sdk_error", "retry_after_seconds", "is_request_validation_error"]

_CONTEXT_MARKERS = ("context_length_exceeded", "prompt is too long", "maximum context length", "too many tokens")
#: How a 5xx body says "your request is invalid" rather than "I failed": pydantic/FastAPI
#: request validation that a server (llama-cpp-python's, for one) wraps in a 500. The same
#: request fails the same way every time, so it is never retried. Markers: pydantic's
#: "N validation error(s)", its v2 messages ("Input should be ...", "Field required"), an
#: error location inside the request body (``'loc': ('body', ...)`` or ``"loc": ["body", ...]``),
#: and FastAPI's ``RequestValidationError``.
_VALIDATION_MARKERS = re.compile(
    r"\bvalidation errors?\b|\binput should be\b|\bfield required\b|requestvalidationerror"
    r"""|['"]loc['"]\s*:\s*[(\[]\s*['"]body['"]""",
    re.IGNORECASE,
)


def is_request_validation_error(text: str) -> bool:
    """Whether an error body's text is a request-validation error (see ``_VALIDATION_MARKERS``)."""
    return bool(_VALIDATION_MARKERS.search(text))


def retry_after_seconds(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date)."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _error_text(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return " ".join(str(inner.get(k, "")) for k in ("type", "code", "message") if inner.get(k))
    return str(getattr(exc, "message", None) or exc)


def map_sdk_error(exc: Exception, sdk: ModuleType, model_id: str) -> ModelError:
    """Translate one SDK exception (``sdk`` is the ``openai`` or ``anthropic`` module)."""
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderTimeoutError("request timed out", model_id=model_id, retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderConnectionError(f"connection failed: {exc}", model_id=model_id, retryable=True)
    if isinstance(exc, (sdk.APIResponseValidationError, json.JSONDecodeError)):
        snippet = getattr(exc, "doc", None) or str(getattr(exc, "body", "") or "")
        return MalformedResponseError("could not parse the provider's response", snippet=snippet, model_id=model_id)
    if isinstance(exc, sdk.APIStatusError):
        status, text = exc.status_code, _error_text(exc)
        retry_after = retry_after_seconds(getattr(exc.response, "headers", None))
        if status == 429:
            return RateLimitError(
                f"rate limited: {text}", model_id=model_id, status_code=status, retryable=True, retry_after=retry_after
            )
        if status >= 500 and is_request_validation_error(text):  # deterministic: the same request fails again
            return ProviderError(
                f"request rejected: {text} (not retried: the server's {status} is a request-validation error)",
                model_id=model_id, status_code=status,
            )
        if status >= 500 or status == 408:
            return ProviderError(
                f"provider error: {text}", model_id=model_id, status_code=status, retryable=True, retry_after=retry_after
            )
        if any(marker in text.lower() for marker in _CONTEXT_MARKERS):
            return ContextLengthExceededError(f"context length exceeded: {text}", model_id=model_id, status_code=status)
        if status == 404:
            return ModelNotFoundError(model_id, reason=f"The provider says: {text}")
        return ProviderError(f"request rejected: {text}", model_id=model_id, status_code=status)
    return ProviderError(f"unexpected {type(exc).__name__}: {exc}", model_id=model_id)


def transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's transport errors (a body cut short mid-stream), which SDKs raise
    unwrapped while a stream is iterated: ``httpx.TransportError`` of each HTTP library the
    SDKs may be built on (``httpx``, or its renamed fork ``httpx2``) that is importable."""
    import importlib

    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)
