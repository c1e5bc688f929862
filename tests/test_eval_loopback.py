"""The pipeline against real provider clients on the loopback server: cost, faults, kill -9 and resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ember.data import DataService, DatasetItem
from ember.eval import EvaluationPipeline, Journal, ModelSystem, NumericEvaluator, bootstrap_ci, compare_systems
from ember.testing import Fault

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
MODEL = "openai:gpt-4o-mini"  # priced in the catalogue: $0.15 / $0.60 per million tokens
ARITHMETIC = [DatasetItem(f"i{i}", f"What is {i} + 1?", str(i + 1)) for i in range(500)]


def test_seed_evaluation_example_runs_as_written(loopback_models, tmp_path):
    loopback_models.server.responder = lambda request: "C"  # 3 of the 6 fixture questions have answer C
    test_data = DataService(data_dir=FIXTURES, cache_dir=tmp_path).load_dataset("mmlu", subset="high_school_mathematics")
    model = MODEL

    from ember.core.utils.eval.evaluators import MultipleChoiceEvaluator
    from ember.core.utils.eval.pipeline import EvaluationPipeline

    # Create evaluation pipeline
    eval_pipeline = EvaluationPipeline(dataset=test_data, evaluators=[MultipleChoiceEvaluator()], model=model)

    # Run evaluation
    results = eval_pipeline.evaluate()
    print(f"Accuracy: {results.metrics['accuracy']:.2f}")
    assert results.metrics["accuracy"] == 0.5 and len(results.records) == 6 == len(loopback_models.server.requests)
    # MultipleChoiceEvaluator is named "accuracy": its series is the accuracy series, each item counted once.
    assert results.n_items == 6 and set(results.metrics) == {"accuracy", "error_rate"}
    correct = [float(r.correct["accuracy"]) for r in results.records]
    assert results.intervals["accuracy"] == bootstrap_ci(np.array(correct))


def test_costs_are_attributed_per_item_for_model_and_notation_systems(loopback_models):
    server = loopback_models.server
    data = ARITHMETIC[:10]
    results = compare_systems(
        data, {"one": MODEL, "vote": f"5:E:{MODEL}:0.7,1:MC"}, [NumericEvaluator()], progress=False
    )
    one, vote = results["one"], results["vote"]
    assert one.accuracy == vote.accuracy == 1.0
    assert [r.calls for r in one.records] == [1] * 10 and [r.calls for r in vote.records] == [5] * 10
    assert len(server.requests) == 60
    per_call = {r.item_id: r.cost_usd for r in one.records}
    for record in vote.records:  # five identical-length calls cost five times one call
        assert record.cost_usd == pytest.approx(5 * per_call[record.item_id])
    total = loopback_models.service.usage_service.total()
    assert one.cost_usd + vote.cost_usd == pytest.approx(total.cost_usd)


@pytest.mark.slow
def test_fault_injection_loses_nothing_and_counts_nothing_twice(loopback_models, tmp_path):
    server = loopback_models.server
    loopback_models.config.update_config("model_registry", {"max_retries": 10})
    server.faults = [
        Fault.rate_limit(retry_after=0.01, rate=0.10),
        Fault.server_error(500, rate=0.05),
        Fault.slow(delay=3.0, rate=0.02),
    ]
    system = ModelSystem(MODEL, timeout=1.0)  # the "slow" answers come after the client gave up: timeouts
    results = EvaluationPipeline(
        ARITHMETIC, [NumericEvaluator()], system, concurrency=64, journal=tmp_path / "faults.sqlite", progress=False
    ).evaluate()
    faults = Counter(r.fault for r in server.requests if r.fault)
    assert faults["rate_limit"] > 20 and faults["server_error"] > 10 and faults["slow"] > 3
    assert results.n_items == 500 and results.n_errors == 0 and results.accuracy == 1.0  # 0 lost
    ids = [r.item_id for r in results.records]
    assert len(ids) == len(set(ids)) == 500 and all(r.calls == 1 for r in results.records)  # 0 twice
    attempts = sum(r.attempts for r in results.records)
    # <=: on a loaded machine an attempt can time out before its body reached the server.
    assert len(server.requests) <= attempts and results.retries == attempts - 500 >= sum(faults.values())
    rows = sqlite3.connect(tmp_path / "faults.sqlite").execute("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM records").fetchone()
    assert rows == (500, 500)


_CHILD = """
import sys
from ember.data import DatasetItem
from ember.eval import EvaluationPipeline, NumericEvaluator
items = [DatasetItem(f"i{i}", f"What is {i} + 1?", str(i + 1)) for i in range(int(sys.argv[2]))]
EvaluationPipeline(items, [NumericEvaluator()], "openai:gpt-4o-mini", concurrency=4, journal=sys.argv[1],
                   progress=False).evaluate()
"""


def _journal_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_kill_9_then_resume_calls_no_finished_item_again(loopback_models, tmp_path):
    server, n = loopback_models.server, 200
    server.latency = 0.02
    script, journal = tmp_path / "child.py", tmp_path / "run.sqlite"
    script.write_text(textwrap.dedent(_CHILD))
    child = subprocess.Popen([sys.executable, str(script), str(journal), str(n)], env=dict(os.environ))
    deadline = time.monotonic() + 60
    while _journal_rows(journal) < 40 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    finished = Journal(journal).finished("openai:gpt-4o-mini")
    assert 40 <= len(finished) < n

    items = [DatasetItem(f"i{i}", f"What is {i} + 1?", str(i + 1)) for i in range(n)]
    resumed = EvaluationPipeline(items, [NumericEvaluator()], MODEL, concurrency=4, journal=journal, progress=False).evaluate()
    asked = Counter(r.body["messages"][-1]["content"] for r in server.requests)
    assert all(asked[f"What is {item_id[1:]} + 1?"] == 1 for item_id in finished)  # never called again
    assert resumed.n_items == n and resumed.n_errors == 0

    clean = EvaluationPipeline(items, [NumericEvaluator()], MODEL, concurrency=4, progress=False).evaluate()
    key = lambda res: [(r.item_id, r.output, dict(r.scores), r.cost_usd) for r in res.records]  # noqa: E731
    assert key(resumed) == key(clean) and resumed.metrics == clean.metrics


def test_operator_costs_are_measured_however_the_operator_was_built(loopback_models):
    from ember.eval import OperatorSystem
    from ember.non import UniformEnsemble
    from ember.operators import MostCommon, Sequential

    explicit = OperatorSystem(
        Sequential([UniformEnsemble(num_units=3, model_name=MODEL, model_service=loopback_models.service), MostCommon()])
    )
    default = OperatorSystem(Sequential([UniformEnsemble(num_units=3, model_name=MODEL), MostCommon()]))
    results = compare_systems(ARITHMETIC[:4], {"explicit": explicit, "default": default}, [NumericEvaluator()], progress=False)
    for label in ("explicit", "default"):
        assert results[label].cost_usd > 0 and [r.calls for r in results[label].records] == [3] * 4
    assert results["explicit"].cost_usd == pytest.approx(results["default"].cost_usd)
    assert results["explicit"].accuracy == results["default"].accuracy == 1.0


def test_unusable_judge_output_fails_the_item_and_resume_retries_it(loopback_models, tmp_path):
    server = loopback_models.server
    server.responder = lambda request: "no json here"
    notation, journal = f"3:E:{MODEL}:0.7,1:J:{MODEL}:0", tmp_path / "judge.sqlite"
    first = compare_systems(ARITHMETIC[:3], {"judged": notation}, [NumericEvaluator()], journal=journal, progress=False)["judged"]
    assert first.n_errors == 3 and first.accuracy == 0.0
    assert all(r.calls == 5 and "structured output" in r.error for r in first.records)  # 3 samples, answer, repair
    assert first.cost_usd == pytest.approx(loopback_models.service.usage_service.total().cost_usd)

    server.responder = lambda request: (
        f'{{"reasoning": "agreed", "final_answer": "{int(request.last_user_message.split("What is ")[1].split()[0]) + 1}"}}'
        if "judge" in request.last_user_message
        else "x"
    )
    second = compare_systems(ARITHMETIC[:3], {"judged": notation}, [NumericEvaluator()], journal=journal, progress=False)["judged"]
    assert second.n_errors == 0 and second.accuracy == 1.0 and all(r.calls == 4 for r in second.records)
