"""Ember's bottom layer: the error root, redaction, the I/O loop, fan-out and usage scopes.

Every other package may import from here; this package imports no other part of Ember.
"""

from ember._runtime._errors import EmberError, close_matches, did_you_mean
from ember._runtime._redact import install_log_redaction, redact, register_secret

__all__ = [
    "EmberError",
    "close_matches",
    "did_you_mean",
    "install_log_redaction",
    "redact",
    "register_secret",
]
