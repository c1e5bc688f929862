"""Reading the configuration sources: files, environment variables, and their expansion.

Everything here runs when a manager is created or reloaded, never on a read, so a file
edited later has no effect until ``reload()``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ember.config._errors import ConfigError
from ember.config._merge import Layer

__all__ = ["Sources"]

#: The variables the official SDKs read, so a key exported for them also works in Ember.
_SDK_VARIABLES: dict[str, tuple[str, ...]] = {
    "OPENAI_API_KEY": ("model_registry", "providers", "openai", "api_key"),
    "OPENAI_BASE_URL": ("model_registry", "providers", "openai", "base_url"),
    "ANTHROPIC_API_KEY": ("model_registry", "providers", "anthropic", "api_key"),
    "ANTHROPIC_BASE_URL": ("model_registry", "providers", "anthropic", "base_url"),
}
_PREFIX = "EMBER_"
_NESTING = "__"
_EXTRA_FILE_VARIABLE = "EMBER_CONFIG"
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where a manager reads its configuration; ``None`` means standard discovery.

    Discovery happens on each :meth:`read`: ``~/.ember/config.yaml`` under the home
    directory of that moment, ``ember.yaml`` in the working directory of that moment, and
    ``os.environ`` as it is then. Missing discovered files are skipped.
    """

    user_file: Path | None = None
    project_file: Path | None = None
    environ: Mapping[str, str] | None = None

    def read(self) -> tuple[Layer, ...]:
        """All layers below runtime overrides, lowest precedence first.

        Project file, user file, the file named by ``EMBER_CONFIG`` (which must exist), the
        SDK variables, then ``EMBER_<SECTION>__<KEY>...`` variables, which beat the SDK ones
        because they are the more specific request.
        """
        environ = dict(os.environ if self.environ is None else self.environ)
        files = [
            (self.project_file or Path.cwd() / "ember.yaml", False),
            (self.user_file or Path.home() / ".ember" / "config.yaml", False),
        ]
        if environ.get(_EXTRA_FILE_VARIABLE):
            files.append((Path(environ[_EXTRA_FILE_VARIABLE]).expanduser(), True))
        layers = [layer for path, required in files if (layer := _read_file(path, environ, required))]
        return (*layers, *_environment_layers(environ))


def _read_file(path: Path, environ: Mapping[str, str], required: bool) -> Layer | None:
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{label}: config file named by {_EXTRA_FILE_VARIABLE} does not exist") from None
        return None
    except OSError as error:
        raise ConfigError(f"{label}: cannot read config file ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        # str(error) quotes the offending line, which may hold a key: report position only.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "malformed YAML"
        raise ConfigError(f"{label}: YAML syntax error{where}: {problem}") from None
    if data is None:
        return Layer(label, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: the top level must map section names to settings")
    return Layer(label, _expand(data, environ, label, ()))


def _expand(value: Any, environ: Mapping[str, str], label: str, key: tuple[str, ...]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a file's values."""
    if isinstance(value, str):
        return _REFERENCE.sub(lambda match: _lookup(match, environ, label, key), value)
    if isinstance(value, dict):
        return {name: _expand(item, environ, label, (*key, str(name))) for name, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, environ, label, key) for item in value]
    return value


def _lookup(match: re.Match[str], environ: Mapping[str, str], label: str, key: tuple[str, ...]) -> str:
    """Shell semantics: ``:-default`` applies when VAR is unset or empty; unset without one is an error."""
    name, default = match.group(1), match.group(2)
    value = environ.get(name)
    if value is None and default is None:
        dotted = ".".join(key)
        raise ConfigError(
            f"{label}: {dotted}: environment variable {name} is not set "
            f"(write ${{{name}:-default}} to give a default)",
            keys=(dotted,),
        )
    return default if not value and default is not None else value


def _environment_layers(environ: Mapping[str, str]) -> list[Layer]:
    layers = [
        Layer(f"environment variable {name}", _nest(path, environ[name]))
        for name, path in _SDK_VARIABLES.items()
        if environ.get(name)
    ]
    for name in sorted(environ):
        if name.upper().startswith(_PREFIX) and _NESTING in name:
            path = tuple(part.lower() for part in name[len(_PREFIX) :].split(_NESTING))
            layers.append(Layer(f"environment variable {name}", _nest(path, _parse_scalar(environ[name]))))
    return layers


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value


def _parse_scalar(text: str) -> Any:
    """An environment value as a YAML scalar: null (``null``, ``~``, empty), bool, number or text.

    A number is taken only when written the way Python prints it, so that a string field
    (a key made of digits, ``0123``) gets back exactly the text that was set; typed fields
    still accept other spellings (``1e3``) because pydantic parses numeric strings.
    """
    lowered = text.lower()
    if lowered in ("", "null", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _DECIMAL.fullmatch(text):
        number = float(text) if "." in text else int(text)
        if str(number) == text:
            return number
    return text
