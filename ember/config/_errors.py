"""The one error type of the configuration layer."""

from __future__ import annotations

from ember._runtime import EmberError

__all__ = ["ConfigError"]


class ConfigError(EmberError):
    """Configuration that cannot be read, or does not fit the schema.

    The message names each key at fault, what is wrong and where the value came from, but
    never the value itself, which may be a credential. ``keys`` holds the dotted paths so
    that tools can point at them without parsing the message.
    """

    def __init__(self, message: str, *, keys: tuple[str, ...] = ()) -> None:
        self.keys = keys
        super().__init__(message)
