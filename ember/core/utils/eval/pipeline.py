"""Seed import path: ``from ember.core.utils.eval.pipeline import EvaluationPipeline``."""

from ember.eval import EvaluationPipeline, EvaluationResults, compare_systems

__all__ = ["EvaluationPipeline", "EvaluationResults", "compare_systems"]
