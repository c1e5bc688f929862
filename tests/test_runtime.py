"""The shared runtime: fan-out with nursery semantics, cancellation that closes requests,
usage scopes that price any system exactly, and an environment read when it is used."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import eventually

from ember._runtime import Cancelled, TaskGroup, UsageScope, UsageStats
from ember.testing import Fault, LoopbackServer

MODEL = "openai:gpt-4o-mini"



def closed_requests(server) -> int:
    return sum(r.client_closed for r in server.requests)


# -- TaskGroup ---------------------------------------------------------------------------


def test_task_group_returns_every_result_and_runs_children_concurrently():
    barrier = threading.Barrier(4, timeout=5)  # passes only if all four run at once

    def child(n: int) -> int:
        barrier.wait()
        return n * n

    with TaskGroup() as group:
        futures = [group.spawn(child, n) for n in range(4)]
    assert [f.result() for f in futures] == [0, 1, 4, 9]


def test_a_failing_child_cancels_its_siblings_and_its_error_is_raised():
    started, stopped = threading.Event(), threading.Event()

    def slow_sibling() -> None:
        started.set()
        with TaskGroup():  # a nested group inherits the outer cancellation
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                from ember._runtime import check_cancelled

                try:
                    check_cancelled()
                except Cancelled:
                    stopped.set()
                    raise
                time.sleep(0.01)

    def failing() -> None:
        started.wait(5)
        raise ValueError("boom")

    begun = time.monotonic()
    with pytest.raises(ValueError, match="boom"), TaskGroup() as group:
        group.spawn(slow_sibling)
        group.spawn(failing)
    assert stopped.is_set() and time.monotonic() - begun < 3


def test_nested_groups_wider_than_the_worker_pool_do_not_deadlock():
    def inner(k: int) -> int:
        with TaskGroup() as group:
            parts = [group.spawn(lambda j=j: j + k) for j in range(8)]
        return sum(p.result() for p in parts)

    with TaskGroup() as group:
        outer = [group.spawn(inner, k) for k in range(100)]  # 100 x 8 children, pool of 64
    assert [f.result() for f in outer] == [28 + 8 * k for k in range(100)]


def test_spawn_outside_the_block_is_an_error():
    group = TaskGroup()
    with pytest.raises(RuntimeError, match="inside the group's with-block"):
        group.spawn(print)


# -- fan-out over real HTTP ----------------------------------------------------------------


def test_ensemble_member_failure_cancels_siblings_and_closes_their_requests(loopback_models):
    from ember.models import ContextLengthExceededError
    from ember.non import UniformEnsemble

    server = loopback_models.server
    # Request 2 fails at once (not retryable); the other three would take 30 s to answer.
    server.faults = [Fault.context_length(on=[2]), Fault.slow(30.0)]
    ensemble = UniformEnsemble(num_units=4, model_name=MODEL)
    begun = time.monotonic()
    with pytest.raises(ContextLengthExceededError):
        ensemble(inputs={"query": "What is 1 + 1?"})
    assert time.monotonic() - begun < 5
    eventually(lambda: closed_requests(server) >= 3)
    records = server.requests
    assert len(records) == 4
    closed = [r for r in records if r.client_closed]
    assert len(closed) == 3 and all(r.finished - r.arrived < 5 for r in closed)


def test_parallel_branch_failure_cancels_the_other_branch_requests(loopback_models):
    from ember.models import ContextLengthExceededError
    from ember.non import UniformEnsemble
    from ember.operators import Parallel

    server = loopback_models.server
    server.faults = [Fault.context_length(on=[3]), Fault.slow(30.0)]
    branches = Parallel([UniformEnsemble(num_units=2, model_name=MODEL) for _ in range(2)])
    with pytest.raises(ContextLengthExceededError):
        branches(inputs={"query": "What is 2 + 2?"})
    eventually(lambda: closed_requests(server) >= 3)
    assert closed_requests(server) == 3


# -- usage scopes -------------------------------------------------------------------------


def test_usage_scope_sees_calls_from_spawned_threads_and_keeps_completed_usage_on_failure(loopback_models):
    from ember.api import models
    from ember.models import ContextLengthExceededError

    server = loopback_models.server
    server.faults = [Fault.context_length(on=[2])]
    with UsageScope() as scope:
        models(MODEL, "What is 1 + 1?")
        with pytest.raises(ContextLengthExceededError), TaskGroup() as group:
            group.spawn(models, MODEL, "What is 2 + 2?")
            group.spawn(lambda: (time.sleep(0.2), models(MODEL, "What is 3 + 3?")))
    answered = [r for r in server.requests if r.status == 200]
    assert scope.calls == len(answered) >= 2 and scope.failed == 1
    assert scope.usage.input_tokens == sum(r.input_tokens for r in answered)
    assert scope.usage.output_tokens == sum(r.output_tokens for r in answered)


def test_usage_stats_unknown_cost_is_never_summed_as_zero():
    assert (UsageStats(1, 1, 0.5) + UsageStats(1, 1, None)).cost_usd is None


def test_eval_prices_a_user_operator_that_calls_models_itself_exactly(loopback_models):
    from ember.api import models
    from ember.data import DatasetItem
    from ember.eval import EvaluationPipeline, NumericEvaluator
    from ember.operators import Operator

    class AskTwice(Operator):
        """A user's operator: two direct ``models(...)`` calls, the second from a thread."""

        def forward(self, *, inputs):
            query = inputs["query"]
            with TaskGroup() as group:
                second = group.spawn(models, MODEL, f"Repeat: {query}")
            first = models(MODEL, query)
            return {"final_answer": first.text, "echo": second.result().text}

    items = [DatasetItem(id=str(k), query=f"What is {k} + {k}?", answer=str(2 * k)) for k in range(6)]
    results = EvaluationPipeline(items, [NumericEvaluator()], AskTwice(), concurrency=3, progress=False).evaluate()
    assert results.accuracy == 1.0
    info = loopback_models.service.registry.get_model_info(MODEL)
    for record in results.records:
        query = f"What is {record.item_id} + {record.item_id}?"
        mine = [r for r in loopback_models.server.requests if query in str(r.body)]
        assert len(mine) == 2 and record.calls == 2
        assert record.input_tokens == sum(r.input_tokens for r in mine)
        assert record.output_tokens == sum(r.output_tokens for r in mine)
        assert record.cost_usd == pytest.approx(info.cost.cost(record.input_tokens, record.output_tokens))
    assert results.cost_usd == pytest.approx(loopback_models.service.usage_service.total().cost_usd)


def test_failed_ensemble_item_keeps_the_tokens_of_calls_that_completed_and_an_unknown_cost(loopback_models):
    from ember.data import DatasetItem
    from ember.eval import EvaluationPipeline, NumericEvaluator

    server = loopback_models.server
    server.faults = [Fault.context_length(on=[2])]
    server.latency = 0.0
    notation = f"3:E:{MODEL}:0.7,1:MC"
    item = DatasetItem(id="a", query="What is 1 + 1?", answer="2")
    # Requests 0 and 1 are answered before request 2 fails: their tokens stay with the item. Its
    # cost is unknown, never a false number: whether the provider billed the failed call is not
    # something Ember can see.
    results = EvaluationPipeline([item], [NumericEvaluator()], notation, concurrency=1, progress=False).evaluate()
    [record] = results.records
    answered = [r for r in server.requests if r.status == 200]
    assert record.error is not None and len(answered) >= 1
    assert record.input_tokens == sum(r.input_tokens for r in answered)
    assert record.cost_usd is None


# -- the environment is read when it is used -------------------------------------------------


def test_notebook_flow_key_set_after_a_failure_and_base_url_changed(monkeypatch, tmp_path):
    from ember._context import reset_app_context
    from ember.api import models
    from ember.config import set_config_manager
    from ember.models import MissingCredentialsError, ModelService

    monkeypatch.chdir(tmp_path)
    set_config_manager(None)
    reset_app_context()
    with LoopbackServer() as first, LoopbackServer() as second:
        monkeypatch.setenv("OPENAI_BASE_URL", first.openai_base_url)
        with pytest.raises(MissingCredentialsError, match="OPENAI_API_KEY"):
            models(MODEL, "What is 1 + 1?")
        os.environ["OPENAI_API_KEY"] = "sk-notebook-key-0123456789"  # as a notebook user would
        try:
            assert models(MODEL, "What is 1 + 1?").text == "2"
            assert len(first.requests) == 1
            old = ModelService()
            monkeypatch.setenv("OPENAI_BASE_URL", second.openai_base_url)
            assert ModelService()(MODEL, "What is 2 + 2?").text == "4"
            assert len(second.requests) == 1
            old(MODEL, "What is 3 + 3?")  # a running service follows the environment too
            assert len(second.requests) == 2 and len(first.requests) == 1
        finally:
            del os.environ["OPENAI_API_KEY"]
            set_config_manager(None)
            reset_app_context()


def test_initialize_ember_rereads_config_files(monkeypatch, tmp_path):
    from ember import initialize_ember
    from ember.config import set_config_manager

    monkeypatch.chdir(tmp_path)
    set_config_manager(None)
    try:
        service = initialize_ember()
        assert service.config_manager.get_config("app").default_model == "local:smollm2-135m-instruct"
        (tmp_path / "ember.yaml").write_text("app: {default_model: 'openai:gpt-4o'}\n")
        service = initialize_ember()
        assert service.config_manager.get_config("app").default_model == "openai:gpt-4o"
    finally:
        set_config_manager(None)


def test_log_level_is_applied_to_the_ember_logger(monkeypatch, tmp_path):
    import logging

    from ember import initialize_ember
    from ember.config import set_config_manager

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMBER_APP__LOG_LEVEL", "INFO")
    set_config_manager(None)
    logger = logging.getLogger("ember")
    before = logger.level
    try:
        initialize_ember()
        assert logger.getEffectiveLevel() == logging.INFO
    finally:
        logger.setLevel(before)
        set_config_manager(None)


def test_import_config_does_not_load_the_model_service():
    code = "import sys, ember.config; print(sorted(m for m in sys.modules if m.startswith('ember.models')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_an_ensemble_eval_within_two_seconds_and_keeps_finished_items(tmp_path):
    import json
    import sqlite3

    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps({"id": str(k), "query": f"What is {k} + 1?", "answer": str(k + 1)}) + "\n"
                            for k in range(40)))  # fmt: skip
    journal = tmp_path / "run.sqlite"
    with LoopbackServer() as server:
        env = {**os.environ, **server.environ(), "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "ember.cli", "eval", "--dataset", str(data), "--system", f"3:E:{MODEL}:0.7,1:MC",
                   "--journal", str(journal), "--concurrency", "4", "--no-progress", "--report", str(tmp_path / "r")]  # fmt: skip
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            eventually(lambda: len([r for r in server.requests if r.status == 200]) >= 12, timeout=60)
            server.latency = 20.0  # from now on every call hangs
            server.wait_for_in_flight(3, timeout=30)
            time.sleep(0.5)  # let items whose last answer just arrived be committed
            answered: dict[str, int] = {}
            for r in server.requests:
                if r.status == 200:
                    query = r.body["messages"][-1]["content"]
                    answered[query] = answered.get(query, 0) + 1
            process.send_signal(signal.SIGINT)
            sent = time.monotonic()
            output, _ = process.communicate(timeout=15)
            elapsed = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
    assert elapsed < 2.0, (elapsed, output)
    assert process.returncode == 130, output
    assert "interrupted" in output
    with sqlite3.connect(journal) as db:
        journaled = {row[0] for row in db.execute("SELECT item_id FROM records WHERE error IS NULL")}
    finished_before = {str(k) for k in range(40) if answered.get(f"What is {k} + 1?", 0) >= 3}
    assert finished_before and journaled == finished_before


@pytest.mark.slow
def test_ctrl_c_stops_a_fan_out_in_the_main_thread_and_closes_its_requests(tmp_path):
    script = tmp_path / "fan_out.py"
    script.write_text(
        "from ember.non import UniformEnsemble\n"
        "print('started', flush=True)\n"
        f"UniformEnsemble(num_units=6, model_name={MODEL!r})(inputs={{'query': 'What is 1 + 1?'}})\n"
    )
    with LoopbackServer(latency=20.0) as server:
        env = {**os.environ, **server.environ(), "HOME": str(tmp_path)}
        process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            server.wait_for_in_flight(6, timeout=60)
            process.send_signal(signal.SIGINT)
            sent = time.monotonic()
            _, errors = process.communicate(timeout=15)
            elapsed = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
        eventually(lambda: closed_requests(server) >= 6)
        closed = closed_requests(server)
    assert elapsed < 1.5, (elapsed, errors)
    assert "KeyboardInterrupt" in errors
    assert closed == 6


def test_attaching_a_future_that_is_already_done_does_not_deadlock():
    import concurrent.futures

    from ember._runtime import CancelScope

    done = concurrent.futures.Future()
    done.set_result(1)
    scope = CancelScope()
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (scope.attach(done), finished.set()), daemon=True)
    worker.start()
    assert finished.wait(5), "attach deadlocked on a finished future"
