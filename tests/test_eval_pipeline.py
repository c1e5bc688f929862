"""The evaluation pipeline with in-process systems: records, metrics, journal, resume, budget."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from ember.data import Dataset, DatasetError, DatasetItem, FirstNSampler
from ember.eval import (
    CostBudget,
    EvaluationPipeline,
    ExactMatchEvaluator,
    Journal,
    JournalMismatchError,
    NumericEvaluator,
    SystemOutput,
    TokenF1Evaluator,
    compare_systems,
    render_html,
    report_dict,
    write_report,
)
from ember.models import ProviderError, UsageStats

ITEMS = [DatasetItem(str(i), f"What is {i} plus 1?", str(i + 1)) for i in range(40)]


def right_on_even(prompt: str) -> str:
    n = int(prompt.split()[2])
    return str(n + 1) if n % 2 == 0 else "no idea"


def _key(results):
    return [(r.item_id, r.output, dict(r.scores), r.error) for r in results.records]


def test_records_metrics_and_intervals():
    results = EvaluationPipeline(ITEMS, [NumericEvaluator(), TokenF1Evaluator()], right_on_even, progress=False).evaluate()
    assert results.metrics["accuracy"] == 0.5 == results.metrics["numeric_match"]
    assert set(results.metrics) == {"numeric_match", "token_f1", "accuracy", "error_rate"}
    low, high = results.intervals["accuracy"].low, results.intervals["accuracy"].high
    assert low < 0.5 < high
    assert len(results.records) == 40 and [r.item_id for r in results.records] == [i.id for i in ITEMS]
    assert results.records[-1].item_id == "39" and results.records[3].correct == {"numeric_match": False, "token_f1": False}
    assert results.cost_usd is None and results.cost_label == "unknown"  # a plain function's cost is not known


def test_items_in_flight_are_bounded_by_concurrency():
    active, peak = 0, 0

    async def system(prompt: str) -> str:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.005)
        active -= 1
        return "x"

    EvaluationPipeline(ITEMS, [ExactMatchEvaluator()], system, concurrency=7, progress=False).evaluate()
    assert peak == 7


def test_a_run_collects_cyclic_garbage_less_often_and_restores_the_thresholds():
    import gc

    from ember.eval._runner import GC_THRESHOLD

    before, seen = gc.get_threshold(), []

    def system(prompt: str) -> str:
        seen.append(gc.get_threshold()[0])
        return "x"

    EvaluationPipeline(ITEMS[:4], [ExactMatchEvaluator()], system, progress=False).evaluate()
    assert seen == [GC_THRESHOLD] * 4 and gc.get_threshold() == before
    try:  # a threshold already above Ember's (or collection turned off: 0) is left alone
        for own in (GC_THRESHOLD * 2, 0):
            gc.set_threshold(own, *before[1:])
            seen.clear()
            EvaluationPipeline(ITEMS[:2], [ExactMatchEvaluator()], system, progress=False).evaluate()
            assert seen == [own] * 2 and gc.get_threshold()[0] == own
    finally:
        gc.set_threshold(*before)


def test_sync_systems_run_on_threads_concurrently():
    barrier = threading.Barrier(4, timeout=5)

    def system(prompt: str) -> str:
        barrier.wait()  # deadlocks (and times out) unless 4 calls run at once
        return "x"

    results = EvaluationPipeline(ITEMS[:8], [ExactMatchEvaluator()], system, concurrency=4, progress=False).evaluate()
    assert results.n_items == 8


def test_several_systems_share_one_pass_over_the_dataset():
    reads = 0

    class Counted:
        def __len__(self):
            return len(ITEMS)

        def __iter__(self):
            nonlocal reads
            for item in ITEMS:
                reads += 1
                yield item

    results = compare_systems(Dataset(Counted()), {"a": right_on_even, "b": lambda p: "no"}, [NumericEvaluator()], progress=False)
    assert reads == 40 and results["a"].accuracy == 0.5 and results["b"].accuracy == 0.0


class PowerCut(BaseException):
    """A crash of the whole process, as a test can raise it: not an item's error, so the run stops."""


class Scripted:
    """The same system (same journal identity) across runs; tests change how it behaves."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.crash_after: int | None = None
        self.failing: set[str] = set()

    def __call__(self, prompt: str) -> str:
        self.calls.append(prompt.split()[2])
        if self.crash_after is not None and len(self.calls) > self.crash_after:
            raise PowerCut("power cut")
        if self.calls[-1] in self.failing:
            raise ProviderError("upstream 503", status_code=503, attempts=5)
        return right_on_even(prompt)


def test_interrupted_run_resumes_without_repeating_finished_items(tmp_path):
    path, system = tmp_path / "run.sqlite", Scripted()
    system.crash_after = 15
    with pytest.raises(PowerCut, match="power cut"):
        EvaluationPipeline(ITEMS, [NumericEvaluator()], system, name="s", concurrency=1, journal=path, progress=False).evaluate()
    finished = Journal(path).finished("s")
    assert len(finished) == 15

    system.calls.clear()
    system.crash_after = None
    resumed = EvaluationPipeline(ITEMS, [NumericEvaluator()], system, name="s", journal=path, progress=False).evaluate()
    assert len(system.calls) == 25 and not set(system.calls) & finished
    clean = EvaluationPipeline(ITEMS, [NumericEvaluator()], right_on_even, name="s", progress=False).evaluate()
    assert _key(resumed) == _key(clean) and resumed.metrics == clean.metrics and resumed.intervals == clean.intervals


def test_failed_items_are_journaled_counted_and_retried_on_resume(tmp_path):
    path, system = tmp_path / "run.sqlite", Scripted()
    system.failing = {"3", "4"}
    first = EvaluationPipeline(ITEMS, [NumericEvaluator()], system, name="s", journal=path, progress=False).evaluate()
    assert first.n_errors == 2 and first.metrics["error_rate"] == 2 / 40 and first.retries == 8
    failed = [r for r in first.records if not r.ok]
    assert [r.item_id for r in failed] == ["3", "4"] and "503" in failed[0].error

    system.calls.clear()
    system.failing = set()
    second = EvaluationPipeline(ITEMS, [NumericEvaluator()], system, name="s", journal=path, progress=False).evaluate()
    assert sorted(system.calls) == ["3", "4"] and second.n_errors == 0 and second.accuracy == 0.5


def test_cost_budget_stops_new_items_and_says_so(tmp_path):
    path = tmp_path / "run.sqlite"

    def priced(prompt: str) -> SystemOutput:
        return SystemOutput("x", UsageStats(10, 1, 0.01), calls=1, attempts=1)

    stopped = EvaluationPipeline(ITEMS, [ExactMatchEvaluator()], priced, name="s", concurrency=2, journal=path,
                                 budget=0.05, progress=False).evaluate()  # fmt: skip
    assert stopped.stopped and "budget" in stopped.stopped and "$0.05" in stopped.stopped
    assert 5 <= stopped.n_items <= 6  # the budget is checked before each item; at most `concurrency - 1` more finish
    assert stopped.cost_usd == pytest.approx(0.01 * stopped.n_items)
    more = EvaluationPipeline(ITEMS, [ExactMatchEvaluator()], priced, name="s", journal=path, budget=CostBudget(1.0),
                              progress=False).evaluate()  # fmt: skip
    assert more.stopped is None and more.n_items == 40


def test_journal_refuses_a_different_run(tmp_path):
    path = tmp_path / "run.sqlite"
    EvaluationPipeline(ITEMS, [NumericEvaluator()], right_on_even, name="s", journal=path, progress=False).evaluate()
    with pytest.raises(JournalMismatchError, match="evaluators"):
        EvaluationPipeline(ITEMS, [ExactMatchEvaluator()], right_on_even, name="s", journal=path, progress=False).evaluate()


def test_duplicate_item_ids_are_refused():
    with pytest.raises(DatasetError, match="twice"):
        EvaluationPipeline([ITEMS[0], ITEMS[0]], [NumericEvaluator()], right_on_even, progress=False).evaluate()


def test_prompt_templates_see_item_fields():
    seen: list[str] = []
    item = DatasetItem.with_options("q", "Pick", ["a", "b"], 0, topic="t")
    EvaluationPipeline([item], [ExactMatchEvaluator()], lambda p: seen.append(p) or "A",
                       prompt="[{topic}] {query} | {choices}", progress=False).evaluate()  # fmt: skip
    assert seen == ["[t] Pick | A. a\nB. b"]


def test_evaluate_works_inside_a_running_event_loop():
    async def notebook_cell():
        return EvaluationPipeline(ITEMS[:4], [NumericEvaluator()], right_on_even, progress=False).evaluate()

    assert asyncio.run(notebook_cell()).n_items == 4


def test_sampled_dataset_and_aevaluate():
    data = Dataset(ITEMS).sample(FirstNSampler(6))
    results = asyncio.run(EvaluationPipeline(data, [NumericEvaluator()], right_on_even, progress=False).aevaluate())
    assert results.n_items == 6 and results.accuracy == 0.5


def test_reports_json_and_self_contained_html(tmp_path):
    results = compare_systems(ITEMS, {"even": right_on_even, "never": lambda p: "?"}, [NumericEvaluator()], progress=False)
    json_path, html_path = write_report(results, tmp_path / "out" / "report", dataset="toy")
    data = json.loads(json_path.read_text())
    assert data["systems"]["even"]["metrics"]["accuracy"] == 0.5 and data["systems"]["never"]["latency"]["p50"] >= 0
    assert data["systems"]["even"]["cost_label"] == "unknown"
    page = html_path.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "even" in page and "never" in page
    assert "src=" not in page and "<link" not in page and "http" not in page
    assert report_dict(results, records=True)["systems"]["even"]["records"][0]["item_id"] == "0"
    assert "<script" not in render_html({"<b>x</b>": results["even"]})  # names are escaped


def test_progress_shows_rate_retries_and_spend():
    import io
    import types

    from rich.console import Console

    from ember.eval._progress import ProgressDisplay
    from ember.eval._results import ItemRecord

    stats = types.SimpleNamespace(in_flight=3, waiting_to_retry=2, retries=7)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with ProgressDisplay(10, stats=stats, budget=CostBudget(1.0), enabled=True, console=console) as display:
        for i in range(4):
            display.advance(ItemRecord("s", str(i), i, "x", {}, {}, {}, 0.1, 0.25, calls=1, attempts=2))
    text = out.getvalue()
    assert "4/10" in text and "it/s" in text and "retrying 2 (total 7)" in text and "spend $1.0000 of $1.00" in text


def test_budget_message_states_the_spend_after_items_in_flight_finish():
    async def priced(prompt: str) -> SystemOutput:
        await asyncio.sleep(0.01 * (int(prompt.split()[2]) % 4 + 1))  # item 0 finishes first, 1-3 are still in flight
        return SystemOutput("x", UsageStats(10, 1, 0.01), calls=1, attempts=1)

    results = EvaluationPipeline(ITEMS, [ExactMatchEvaluator()], priced, concurrency=4, budget=0.01, progress=False).evaluate()
    assert results.n_items == 4 and results.cost_usd == pytest.approx(0.04)
    assert "spent $0.0400" in results.stopped, results.stopped


def test_an_evaluator_named_like_a_summary_series_is_counted_once():
    from ember.eval import MultipleChoiceEvaluator
    from ember.eval._metrics import bootstrap_ci

    class Named(ExactMatchEvaluator):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    items = [DatasetItem.with_options(str(i), "Pick", ["x", "y"], i % 2) for i in range(6)]
    results = EvaluationPipeline(items, [MultipleChoiceEvaluator()], lambda p: "A", progress=False).evaluate()
    assert results.n_items == 6 and set(results.metrics) == {"accuracy", "error_rate"} and results.accuracy == 0.5
    assert results.intervals["accuracy"] == bootstrap_ci(np.array([1.0, 0.0] * 3))  # six values, not twelve

    results = EvaluationPipeline(items, [MultipleChoiceEvaluator(), Named("accuracy"), Named("error_rate")], lambda p: "A",
                                 progress=False).evaluate()  # fmt: skip
    assert results.n_items == 6 and results.metrics["error_rate"] == 0.0
    assert set(results.metrics) == {"accuracy", "accuracy_2", "error_rate_2", "error_rate"}
