"""UniformEnsemble and VariedEnsemble: the two ways NON code builds an :class:`Ensemble`.

>>> from ember.api import non
>>> non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o").num_units
3
>>> varied = non.VariedEnsemble(model_names=["openai:gpt-4o", "anthropic:claude-3-5-sonnet"],
...                             temperatures=[0.2, 0.9])
>>> [(lm.model_name, lm.temperature) for lm in varied.lm_modules]
[('openai:gpt-4o', 0.2), ('anthropic:claude-3-5-sonnet', 0.9)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ember.operators import Ensemble, LMModule, register_operator

if TYPE_CHECKING:
    from ember.models import ModelService

__all__ = ["UniformEnsemble", "VariedEnsemble"]


@register_operator
class UniformEnsemble(Ensemble):
    """``num_units`` samples of one model at one temperature, all in flight at once."""

    def __init__(
        self,
        num_units: int,
        model_name: str,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        model_service: ModelService | None = None,
    ) -> None:
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"num_units must be a positive integer, got {num_units!r}")
        super().__init__([LMModule(model_name, temperature, max_tokens, model_service)] * num_units)

    @property
    def num_units(self) -> int:
        return len(self.lm_modules)


@register_operator
class VariedEnsemble(Ensemble):
    """One member per model name; temperatures per member, or one for all."""

    def __init__(
        self,
        model_names: Sequence[str],
        temperatures: float | Sequence[float] = 0.7,
        max_tokens: int | None = None,
        model_service: ModelService | None = None,
    ) -> None:
        names = [model_names] if isinstance(model_names, str) else list(model_names)
        temps = [temperatures] * len(names) if isinstance(temperatures, (int, float)) else list(temperatures)
        if len(temps) != len(names):
            raise ValueError(f"{len(names)} model names but {len(temps)} temperatures")
        super().__init__([LMModule(name, t, max_tokens, model_service) for name, t in zip(names, temps)])
