"""Seed import path: ``from ember.core.utils.eval.evaluators import MultipleChoiceEvaluator``."""

from ember.eval import (
    EvaluationResult,
    Evaluator,
    ExactMatchEvaluator,
    LLMJudgeEvaluator,
    MultipleChoiceEvaluator,
    NumericEvaluator,
    RegexEvaluator,
    RoutedEvaluator,
    TokenF1Evaluator,
)

__all__ = [
    "Evaluator",
    "EvaluationResult",
    "ExactMatchEvaluator",
    "TokenF1Evaluator",
    "RegexEvaluator",
    "MultipleChoiceEvaluator",
    "NumericEvaluator",
    "LLMJudgeEvaluator",
    "RoutedEvaluator",
]
