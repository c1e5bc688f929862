"""Ember's bottom layer: errors, redaction, the I/O loop, structured fan-out and usage scopes.

Every other package may import from here; this package imports no other part of Ember.
"""

from ember._runtime._errors import EmberError, close_matches, did_you_mean
from ember._runtime._loop import io_loop, on_io_loop, run_on_io_loop, submit
from ember._runtime._ray import RAY_EXTRA, RayNotInstalledError, connect_ray, require_ray
from ember._runtime._redact import install_log_redaction, redact, register_secret
from ember._runtime._scope import Cancelled, CancelScope, check_cancelled, current_scope, open_scope
from ember._runtime._taskgroup import TaskGroup
from ember._runtime._threads import to_thread, use_threads
from ember._runtime._usage import UsageScope, UsageStats, current_usage_scope

__all__ = [
    "RAY_EXTRA",
    "CancelScope",
    "Cancelled",
    "EmberError",
    "RayNotInstalledError",
    "TaskGroup",
    "UsageScope",
    "UsageStats",
    "check_cancelled",
    "close_matches",
    "connect_ray",
    "current_scope",
    "current_usage_scope",
    "did_you_mean",
    "install_log_redaction",
    "io_loop",
    "on_io_loop",
    "open_scope",
    "redact",
    "register_secret",
    "require_ray",
    "run_on_io_loop",
    "submit",
    "to_thread",
    "use_threads",
]
