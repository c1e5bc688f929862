"""Evaluators score outputs the way a grader would; metrics are reproducible and well-formed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.data import DatasetItem
from ember.eval import (
    ExactMatchEvaluator,
    LLMJudgeEvaluator,
    MultipleChoiceEvaluator,
    NumericEvaluator,
    RegexEvaluator,
    RoutedEvaluator,
    TokenF1Evaluator,
    bootstrap_ci,
    extract_choice,
    extract_number,
    normalize_text,
    percentiles,
)

PARIS = DatasetItem("p", "Capital of France?", "Paris", metadata={"aliases": ["Paris, France"]})
MC = DatasetItem.with_options("m", "Largest?", ["New York", "New York City", "Boston"], 1)


@pytest.mark.parametrize(
    "output, exact, contains",
    [("Paris", True, True), ("the paris.", True, True), ("Paris, France", True, True),
     ("The capital of France is Paris.", False, True), ("Parisian food", False, False), ("", False, False)],
)  # fmt: skip
def test_exact_and_contains_match(output, exact, contains):
    assert ExactMatchEvaluator()(output, PARIS).is_correct is exact
    assert ExactMatchEvaluator(contains=True)(output, PARIS).is_correct is contains


def test_normalize_text_follows_squad():
    assert normalize_text("  The Eiffel-Tower, an  icon! ") == "eiffeltower icon"


@pytest.mark.parametrize(
    "output, label",
    [("B", "B"), ("(C)", "C"), ("The answer is b.", "B"), ("Answer: A", "A"), ("B) New York City", "B"),
     ("I'd say New York City.", "B"), ("New York", "A"), ("Boston or New York", None), ("no idea", None)],
)  # fmt: skip
def test_multiple_choice_extraction(output, label):
    assert extract_choice(output, MC.choices) == label
    assert MultipleChoiceEvaluator()(output, MC).is_correct is (label == "B")


def test_multiple_choice_needs_choices():
    with pytest.raises(ValueError, match="no choices"):
        MultipleChoiceEvaluator()("A", PARIS)


@pytest.mark.parametrize(
    "output, number",
    [("so 12 + 7 = 19", 19.0), ("The answer is 1,234.", 1234.0), ("work...\n#### 72", 72.0),
     (r"thus \boxed{3/4} and 9", 0.75), ("It costs $12.50.", 12.5), ("-5 degrees", -5.0), ("none", None)],
)  # fmt: skip
def test_number_extraction(output, number):
    assert extract_number(output) == number


def test_numeric_tolerance_absolute_and_relative():
    item = DatasetItem("n", "?", "100")
    assert NumericEvaluator()("100.0", item).is_correct
    assert not NumericEvaluator()("100.5", item).is_correct
    assert NumericEvaluator(tolerance=1.0)("100.5", item).is_correct
    assert NumericEvaluator(tolerance=0.01, relative=True)("the answer is 100.9", item).is_correct
    with pytest.raises(ValueError, match="not a number"):
        NumericEvaluator()("1", PARIS)


def test_token_f1_and_regex():
    item = DatasetItem("f", "?", "the quick brown fox")
    result = TokenF1Evaluator()("quick brown dog", item)
    assert result.score == pytest.approx(2 / 3) and not result.is_correct
    assert TokenF1Evaluator(threshold=0.5)("quick brown dog", item).is_correct
    regex = RegexEvaluator(r"final answer:\s*(\w+)")
    assert regex("blah. Final answer: Paris", PARIS).is_correct
    missing = regex("Paris", PARIS)
    assert not missing.is_correct and missing.metadata == {"extracted": None}


def test_routed_evaluator_picks_by_metadata():
    routed = RoutedEvaluator({"number": NumericEvaluator(), "text": ExactMatchEvaluator(contains=True)})
    assert routed("It is 8.", DatasetItem("a", "?", "8", metadata={"answer_type": "number"})).is_correct
    assert routed("It is Oslo.", DatasetItem("b", "?", "Oslo", metadata={"answer_type": "text"})).is_correct
    with pytest.raises(KeyError, match="answer_type"):
        routed("x", DatasetItem("c", "?", "x"))


def test_llm_judge_asks_a_model_and_parses_its_verdict(loopback_models):
    server = loopback_models.server
    server.responder = lambda request: "CORRECT" if "Paris" in request.last_user_message.split("Candidate answer:")[1] else "INCORRECT"
    judge = LLMJudgeEvaluator("openai:gpt-4o-mini", service=loopback_models.service)
    yes, no = judge("It's Paris.", PARIS), judge("Lyon", PARIS)
    assert yes.is_correct and not no.is_correct
    assert yes.usage is not None and yes.usage.cost_usd > 0 and yes.metadata["verdict"] == "CORRECT"
    server.responder = lambda request: "hmm"
    unclear = judge("Paris", PARIS)
    assert not unclear.is_correct and unclear.metadata["verdict"] is None
    assert len(server.requests) == 3 and "Reference answer: Paris" in server.requests[0].body["messages"][0]["content"]


# --- metrics ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=200), st.integers(0, 5))
def test_bootstrap_interval_brackets_the_mean_and_is_reproducible(values, seed):
    interval = bootstrap_ci(values, seed=seed)
    assert min(values) - 1e-9 <= interval.low <= interval.value + 1e-9 <= interval.high + 2e-9 <= max(values) + 3e-9
    assert bootstrap_ci(values, seed=seed) == interval


def test_bootstrap_interval_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small, large = bootstrap_ci(rng.random(50) < 0.5), bootstrap_ci(rng.random(5000) < 0.5)
    assert large.high - large.low < small.high - small.low


def test_bootstrap_of_nothing_and_percentiles():
    assert math.isnan(bootstrap_ci([]).value)
    assert percentiles(list(range(101))) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert math.isnan(percentiles([])["p50"])


# --- code execution ----------------------------------------------------------------------------

SQUARE = DatasetItem("c", "Write square(x).", "", metadata={"tests": "assert square(3) == 9\nassert square(-2) == 4"})


@pytest.mark.parametrize(
    "output, status",
    [("```python\ndef square(x):\n    return x * x\n```", "passed"),
     ("def square(x):\n    return x + x", "failed"),
     ("def square(x):\n    while True: pass", "timeout"),
     ("big = bytearray(2**31)\ndef square(x): return x * x", "resource limit"),
     ("import socket\nsocket.create_connection(('127.0.0.1', 9))\ndef square(x): return x * x", "blocked"),
     ("import subprocess\nsubprocess.run(['true'])\ndef square(x): return x * x", "blocked"),
     ("import os\nos.system('true')\ndef square(x): return x * x", "blocked")],
)  # fmt: skip
def test_code_execution_runs_tests_within_limits(output, status):
    from ember.eval import CodeExecutionEvaluator

    result = CodeExecutionEvaluator(timeout=2.0, memory_mb=256)(output, SQUARE)
    assert result.metadata["status"] == status and result.is_correct is (status == "passed")
