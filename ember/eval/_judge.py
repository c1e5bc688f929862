"""LLM-as-judge: a model decides whether an output answers the question correctly.

For free-form answers no string rule can grade ("Paris is the capital" vs "Paris"). The
judge sees the question, the reference answer and the output, and must reply with one
word. Its calls go through the same :class:`ModelService` as the system's — same
concurrency budget, retries and usage accounting — and its usage is added to the item's.
A reply that is neither verdict scores wrong and is flagged ``verdict=None`` in metadata.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ember.data import DatasetItem
from ember.eval._evaluator import EvaluationResult, Evaluator

if TYPE_CHECKING:
    from ember.models import ModelResponse, ModelService

__all__ = ["LLMJudgeEvaluator", "JUDGE_TEMPLATE"]

JUDGE_TEMPLATE = (
    "You grade answers. Question:\n{question}\n\nReference answer: {reference}\n\n"
    "Candidate answer: {output}\n\n"
    "Does the candidate give the same final answer as the reference? Reply with one word: CORRECT or INCORRECT."
)
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b", re.IGNORECASE)


class LLMJudgeEvaluator(Evaluator):
    """Asks ``model_id`` to grade; ``template`` may use ``{question}``, ``{reference}``, ``{output}``."""

    name = "judge"

    def __init__(
        self,
        model_id: str,
        *,
        service: ModelService | None = None,
        template: str = JUDGE_TEMPLATE,
        max_tokens: int = 8,
        **params: Any,
    ) -> None:
        self.model_id, self.template, self.max_tokens = model_id, template, max_tokens
        self._service, self._params = service, {"temperature": 0.0, **params}

    @property
    def service(self) -> ModelService:
        if self._service is None:
            from ember._context import get_app_context

            self._service = get_app_context().model_service
        return self._service

    def _prompt(self, output: str, item: DatasetItem) -> str:
        return self.template.format(question=item.prompt, reference=item.answer_text, output=output)

    def _verdict(self, response: ModelResponse) -> EvaluationResult:
        found = _VERDICT.search(response.text)
        verdict = found.group(1).upper() if found else None
        correct = verdict == "CORRECT"
        return EvaluationResult(float(correct), correct, {"verdict": verdict, "judge_text": response.text}, response.usage)

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        response = self.service.invoke_model(self.model_id, self._prompt(output, item), max_tokens=self.max_tokens, **self._params)
        return self._verdict(response)

    async def aevaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        prompt = self._prompt(output, item)
        response = await self.service.ainvoke_model(self.model_id, prompt, max_tokens=self.max_tokens, **self._params)
        return self._verdict(response)
