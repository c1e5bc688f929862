"""Keeping credentials out of messages, reprs and logs.

Every secret Ember resolves is registered here; :func:`redact` replaces registered values
and anything shaped like a provider key.

How log output is kept clean (:func:`install_log_redaction`, installed as soon as a secret
is registered, and again by every model service and app context):

1. **Every logger's records** pass through a wrapped log-record factory. A record whose
   formatted message contains a secret gets the redacted text as its ``msg`` (and no
   ``args``); a record without one is left as it was, so handlers that group by message
   template (Sentry, structured loggers) see no change. Its ``stack_info`` is redacted too.
   Covering every logger, not a list of prefixes, matters: the installed SDKs log through
   ``httpx2`` / ``httpcore2``, a name no prefix list anticipated, and a user's own
   ``logger.exception(...)`` may hold a key in its message.
2. **Formatted output** is redacted at the formatter: ``logging.Formatter.format``,
   ``formatException`` and ``formatStack`` are wrapped (on the base class, so every
   subclass that calls them, pytest's and ``basicConfig``'s included, is covered). A
   traceback's text, which the record factory cannot see (it is rendered later, from
   ``exc_info``), is therefore redacted both in the handler's output and in the
   ``record.exc_text`` cache other handlers reuse. ``exc_info`` itself is left on the
   record, so ``caplog`` and anything inspecting the exception keep working.

Why not a filter: filters attach to one logger or handler, so they miss child loggers that
propagate and handlers added later. Why not pre-rendering ``exc_info`` into ``exc_text``
and dropping ``exc_info``: it would break every consumer of ``record.exc_info``.

Cost (measured with ``timeit`` on a 2-core CI machine, Python 3.11, two secrets registered):
creating a record with a short message and no secret costs about 0.6 µs more (1.7 -> 2.3
µs: one extra ``getMessage`` and a substring test per secret), and creating, formatting and
writing it about 1.2 µs more (6.0 -> 7.2 µs); a 4 KB message costs about 4.5 µs more.
Records below a logger's level are never created, so disabled DEBUG logging costs nothing.
"""

from __future__ import annotations

import functools
import logging
import re
import threading

__all__ = ["redact", "register_secret", "install_log_redaction", "clean_credential"]

_KEY_SHAPES = re.compile(r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{16,}|Bearer\s+[A-Za-z0-9_\-\.]{8,})")
_MASK = "***"
_secrets: set[str] = set()
_lock = threading.Lock()
#: The registered secrets, longest first, and their alternation, swapped together. A plain
#: substring test per secret is much faster than scanning with the alternation, so clean
#: text (nearly all of it) costs almost nothing.
_state: tuple[tuple[str, ...], re.Pattern[str] | None] = ((), None)


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` removes it wherever it appears.

    Registering the first secret also installs log redaction, so no log line written
    after a key is known can show it.
    """
    global _state
    if not value or len(value) < 4 or value in _secrets:
        return
    with _lock:
        _secrets.add(value)
        ordered = tuple(sorted(_secrets, key=len, reverse=True))
        _state = (ordered, re.compile("|".join(re.escape(s) for s in ordered)))
    install_log_redaction()


def redact(text: str) -> str:
    """Return ``text`` with registered secrets and key-shaped tokens masked."""
    if not isinstance(text, str):
        text = str(text)
    ordered, pattern = _state
    if pattern is not None:
        for secret in ordered:
            if secret in text:
                text = pattern.sub(_MASK, text)
                break
    if "sk-" in text or "Bearer" in text:
        text = _KEY_SHAPES.sub(_MASK, text)
    return text


#: Inside a key: any whitespace (a CRLF ``.env`` file's ``\r``, a pasted line break) or control
#: character. HTTP forbids them in a header, so such a key can never be sent.
_NOT_IN_A_KEY = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def clean_credential(value: str) -> tuple[str, str | None]:
    r"""``value`` without surrounding whitespace, and why it cannot be a credential (or ``None``).

    The reason never quotes the value. Both the raw and the stripped value are registered
    for redaction, so a log line that shows either is masked.

    >>> clean_credential("abc-123-xyz\r\n")
    ('abc-123-xyz', None)
    >>> clean_credential("abc 123")[1]
    'contains whitespace or control characters'
    """
    stripped = value.strip()
    register_secret(value)
    register_secret(stripped)
    if _NOT_IN_A_KEY.search(stripped):
        return stripped, "contains whitespace or control characters"
    if not stripped.isascii():
        return stripped, "contains characters outside ASCII (a pasted typographic quote or dash?)"
    return stripped, None


_installed = False


def install_log_redaction() -> None:
    """Redact every log record and every formatted log line, tracebacks included (idempotent)."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs):
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a broken format string is not ours to fix
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
            return record

        logging.setLogRecordFactory(factory)
        formatter = logging.Formatter
        for name in ("format", "formatException", "formatStack"):
            original = getattr(formatter, name)
            if not getattr(original, "_ember_redacts", False):
                setattr(formatter, name, _redacting(original))
        _installed = True


def _redacting(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return redact(method(self, *args, **kwargs))

    wrapper._ember_redacts = True  # type: ignore[attr-defined]
    return wrapper
