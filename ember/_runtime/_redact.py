"""Keeping credentials out of messages, reprs and logs.

Every secret Ember resolves is registered here; :func:`redact` replaces registered values
and anything shaped like a provider key. A wrapped log-record factory applies it to every record of the
``ember``, ``openai``, ``anthropic``, ``httpx`` and ``httpcore`` loggers, so even an SDK's
debug output cannot leak a key.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["redact", "register_secret", "install_log_redaction"]

_KEY_SHAPES = re.compile(r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{16,}|Bearer\s+[A-Za-z0-9_\-\.]{8,})")
_MASK = "***"
_secrets: set[str] = set()
_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` removes it wherever it appears."""
    global _pattern
    if not value or len(value) < 4 or value in _secrets:
        return
    with _lock:
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """Return ``text`` with registered secrets and key-shaped tokens masked."""
    if not isinstance(text, str):
        text = str(text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(_MASK, text)
    return _KEY_SHAPES.sub(_MASK, text)


_LOGGER_PREFIXES = ("ember", "openai", "anthropic", "httpx", "httpcore")
_installed = False


def install_log_redaction() -> None:
    """Redact every log record from loggers that could see a key (idempotent).

    Wrapping the record factory, rather than adding a filter, also covers child loggers
    such as ``openai._base_client`` and whatever handlers the user attaches.
    """
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(name, level, fn, lno, msg, args, exc_info, func=None, sinfo=None, **kw):
            record = previous(name, level, fn, lno, msg, args, exc_info, func, sinfo, **kw)
            if name.split(".", 1)[0] in _LOGGER_PREFIXES:
                try:
                    message = record.getMessage()
                except Exception:  # a broken format string is not ours to fix
                    return record
                record.msg, record.args = redact(message), None
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
