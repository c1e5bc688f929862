"""What Ember knows about a model: identity, provider settings, price, limits.

``ModelInfo(id="openai:gpt-4o")`` is complete on its own: the provider comes from the id
and every field the user leaves out is filled from the bundled catalogue
(``catalogue.yaml``) when the model is listed there. A model absent from the catalogue
keeps an *unknown* price (``None``), which the usage layer reports as unknown, never $0.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ember._runtime._redact import clean_credential

__all__ = ["ModelInfo", "ModelCost", "RateLimit", "ProviderInfo", "split_model_id", "catalogue"]


def split_model_id(model_id: str) -> tuple[str, str]:
    """``"openai:gpt-4o"`` -> ``("openai", "gpt-4o")``; the name may itself contain colons."""
    provider, sep, name = model_id.partition(":")
    if not sep or not provider or not name:
        raise ValueError(f"model id {model_id!r} must look like 'provider:name', e.g. 'openai:gpt-4o'")
    return provider, name


@functools.cache
def catalogue() -> dict[str, dict[str, Any]]:
    """The bundled catalogue of well-known models, parsed once per process."""
    text = resources.files("ember.models").joinpath("catalogue.yaml").read_text()
    return yaml.safe_load(text)


class ModelCost(BaseModel):
    """Price in USD per million tokens; ``None`` means unknown."""

    model_config = ConfigDict(frozen=True)

    input_cost_per_million: float | None = None
    output_cost_per_million: float | None = None

    @property
    def known(self) -> bool:
        return self.input_cost_per_million is not None and self.output_cost_per_million is not None

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        if not self.known:
            return None
        return (input_tokens * self.input_cost_per_million + output_tokens * self.output_cost_per_million) / 1e6


class RateLimit(BaseModel):
    """Client-side limits shared by every caller of this model in the process.

    ``None`` means: take the provider's configured value, else no limit (RPM/TPM) or the
    registry default (concurrency).
    """

    model_config = ConfigDict(frozen=True)

    max_concurrency: int | None = Field(default=None, ge=1)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)


class ProviderInfo(BaseModel):
    """Per-model provider settings; unset fields fall back to the provider's config."""

    model_config = ConfigDict(frozen=True)

    name: str
    base_url: str | None = None
    api_key: SecretStr | None = None

    @field_validator("api_key")
    @classmethod
    def _strip_and_register(cls, key: SecretStr | None) -> SecretStr | None:
        """Surrounding whitespace goes (a key read from a CRLF file ends in ``\\r``).

        A key with whitespace inside is refused where it is resolved, with an error naming
        where it came from (:class:`~ember.models.InvalidCredentialsError`); raising here
        would put the value into pydantic's message.
        """
        if key is None:
            return None
        stripped, _ = clean_credential(key.get_secret_value())
        return SecretStr(stripped) if stripped else None

    @field_validator("base_url")
    @classmethod
    def _strip_url(cls, url: str | None) -> str | None:
        return url.strip() or None if url is not None else None

    def __getitem__(self, key: str) -> Any:  # the seed writes model_info.provider["name"]
        return getattr(self, key)


class ModelInfo(BaseModel):
    """Metadata for one model, keyed by ``provider:name``.

    >>> info = ModelInfo(id="openai:gpt-4o")
    >>> info.provider.name, info.cost.input_cost_per_million
    ('openai', 2.5)
    """

    model_config = ConfigDict(frozen=True)

    id: str
    name: str = ""
    api_name: str = ""
    provider: ProviderInfo = None  # type: ignore[assignment]  # filled from the id
    cost: ModelCost = ModelCost()
    context_window: int | None = None
    rate_limit: RateLimit = RateLimit()

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "id" not in data:
            return data
        data = dict(data)
        provider, name = split_model_id(data["id"])
        known = catalogue().get(data["id"], {})
        data.setdefault("name", name)
        data.setdefault("api_name", known.get("api_name", name))
        if data.get("provider") is None:
            data["provider"] = {"name": provider}
        elif isinstance(data["provider"], dict):
            data["provider"] = {"name": provider, **data["provider"]}
        if "cost" not in data and "input" in known:
            data["cost"] = {"input_cost_per_million": known["input"], "output_cost_per_million": known["output"]}
        data.setdefault("context_window", known.get("context_window"))
        return data

    @property
    def provider_name(self) -> str:
        return self.provider.name
