"""Evaluation: evaluators, metrics with bootstrap intervals, a resumable pipeline, reports."""

from ember.eval._budget import CostBudget
from ember.eval._choice import MultipleChoiceEvaluator, extract_choice
from ember.eval._code import CodeExecutionEvaluator, extract_code
from ember.eval._evaluator import EvaluationResult, Evaluator, RoutedEvaluator
from ember.eval._journal import Journal, JournalCorruptError, JournalError, JournalInUseError, JournalMismatchError
from ember.eval._judge import JUDGE_TEMPLATE, LLMJudgeEvaluator
from ember.eval._metrics import Interval, bootstrap_ci, percentiles
from ember.eval._numeric import NumericEvaluator, extract_number, parse_number
from ember.eval._operator_system import OperatorSystem
from ember.eval._pipeline import EvaluationPipeline, compare_systems
from ember.eval._record import ItemRecord
from ember.eval._report import comparison_table, render_html, report_dict, write_report
from ember.eval._resolve import as_system
from ember.eval._results import EvaluationResults, RecordView
from ember.eval._runner import PromptTemplateError, RunOptions, render_prompt, template_fields
from ember.eval._systems import FunctionSystem, ModelSystem, System, SystemFailure, SystemOutput
from ember.eval._text import ExactMatchEvaluator, RegexEvaluator, TokenF1Evaluator, normalize_text

__all__ = [
    "EvaluationPipeline",
    "compare_systems",
    "RunOptions",
    "render_prompt",
    "template_fields",
    "PromptTemplateError",
    "EvaluationResults",
    "ItemRecord",
    "RecordView",
    "Evaluator",
    "EvaluationResult",
    "RoutedEvaluator",
    "ExactMatchEvaluator",
    "TokenF1Evaluator",
    "RegexEvaluator",
    "MultipleChoiceEvaluator",
    "NumericEvaluator",
    "LLMJudgeEvaluator",
    "JUDGE_TEMPLATE",
    "CodeExecutionEvaluator",
    "extract_code",
    "normalize_text",
    "extract_choice",
    "extract_number",
    "parse_number",
    "Interval",
    "bootstrap_ci",
    "percentiles",
    "Journal",
    "JournalError",
    "JournalMismatchError",
    "JournalCorruptError",
    "JournalInUseError",
    "CostBudget",
    "comparison_table",
    "report_dict",
    "render_html",
    "write_report",
    "System",
    "SystemOutput",
    "ModelSystem",
    "FunctionSystem",
    "OperatorSystem",
    "SystemFailure",
    "as_system",
]
