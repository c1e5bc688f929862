"""Graphs and ``pmap`` on Ray (one local Ray instance for the module): the "ray" scheduler
agrees with "parallel" request for request, failures name their node and cancel the
siblings' tasks, ``pmap(backend="ray")`` keeps its bound, and without Ray the error names
the extra to install.

The loopback server's address and the planted key reach the Ray workers only through the
environment they inherit from this process (set before ``ray.init``), never as task
arguments."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from ember.testing import LoopbackServer
from ember.xcs import NodeExecutionError, TransformError, XCSGraph, execute_graph, execution_options, pmap

pytestmark = pytest.mark.slow

KEY = "sk-loopback-planted-key-ray-0123456789"
MODEL = "openai:gpt-4o"


def responder(request) -> str:
    if "You are a judge" in request.last_user_message:
        return json.dumps({"reasoning": "they agree", "final_answer": "qubits"})
    from ember.testing import default_responder

    return default_responder(request)


class Sleep:
    """Sleeps, then (if not interrupted) writes ``marker`` and returns ``{name: True}``."""

    def __init__(self, name: str, seconds: float, marker: str | None = None) -> None:
        self.name, self.seconds, self.marker = name, seconds, marker

    def __call__(self, *, inputs):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:  # in small steps: Ray's polite cancel lands between bytecodes
            time.sleep(0.02)
        if self.marker:
            with open(self.marker, "w") as f:
                f.write("finished")
        return {self.name: True}


class Fail:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def __call__(self, *, inputs):
        time.sleep(self.delay)
        raise ValueError("boom")


def fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


@pytest.fixture(scope="module")
def cluster():
    """The loopback server, its environment set BEFORE ``ray.init`` (workers inherit it), and Ray."""
    ray = pytest.importorskip("ray")
    from ember._context import get_app_context, reset_app_context
    from ember._runtime import connect_ray
    from ember.config import set_config_manager

    saved = dict(os.environ)
    with LoopbackServer(responder=responder) as server:
        os.environ.update(server.environ(KEY))
        set_config_manager(None)
        reset_app_context()
        # The operators defined here travel by value: workers cannot import this test module.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        connect_ray(num_cpus=2)
        try:
            yield server
        finally:
            ray.shutdown()
            get_app_context().model_service.close()
            os.environ.clear()
            os.environ.update(saved)
            set_config_manager(None)
            reset_app_context()


def request_texts(server) -> list[str]:
    return sorted(json.dumps(r.body, sort_keys=True) for r in server.requests)


def test_ensemble_judge_on_ray_matches_parallel_output_and_requests(cluster):
    from ember.api import non

    graph = XCSGraph()
    graph.add_node(operator=non.UniformEnsemble(num_units=3, model_name=MODEL), node_id="ensemble")
    graph.add_node(operator=non.JudgeSynthesis(model_name=MODEL), node_id="judge")
    graph.add_edge(from_id="ensemble", to_id="judge")
    inputs = {"query": "What is quantum computing?"}

    cluster.reset()
    local = execute_graph(graph=graph, inputs=inputs, options=execution_options(scheduler="parallel"), outputs="all")
    local_requests = request_texts(cluster)
    cluster.reset()
    remote, trace = execute_graph(
        graph=graph, inputs=inputs, options=execution_options(scheduler="ray"), outputs="all", trace=True
    )

    assert remote == local and remote["judge"].final_answer == "qubits"
    assert request_texts(cluster) == local_requests and len(local_requests) == 4
    assert trace.scheduler == "ray"
    assert [trace[n].status for n in ("ensemble", "judge")] == ["ok", "ok"]
    assert trace["ensemble"].calls == 3 and trace["judge"].calls == 1 and trace.total_tokens > 0
    assert trace["ensemble"].end <= trace["judge"].start and trace["judge"].thread != os.getpid()
    assert all(KEY not in json.dumps(r.body) for r in cluster.requests)


def test_a_failing_node_is_named_and_its_sibling_tasks_are_cancelled(cluster, tmp_path):
    marker = tmp_path / "slow-finished"
    graph = XCSGraph()
    graph.add_node(operator=Sleep("slow", 3.0, str(marker)), node_id="slow")
    graph.add_node(operator=Fail(delay=0.5), node_id="broken")
    started = time.monotonic()
    with pytest.raises(NodeExecutionError) as caught:
        execute_graph(graph=graph, options=execution_options(scheduler="ray", on_error="cancel_all"))
    assert time.monotonic() - started < 2.9  # it did not wait for the slow sibling
    error = caught.value
    assert error.node_id == "broken" and "'broken'" in str(error)
    assert isinstance(error.__cause__, ValueError) and str(error.__cause__) == "boom"
    assert error.trace["broken"].status == "failed" and error.trace["slow"].status == "cancelled"
    time.sleep(3.5)
    assert not marker.exists()  # the sibling's task was cancelled, not left running

    # cancel_dependents: the failed node's dependent is skipped, an unrelated node still runs.
    graph = XCSGraph()
    graph.add_node(operator=Fail(), node_id="broken")
    graph.add_node(operator=Sleep("after", 0.0), node_id="after")
    graph.add_node(operator=Sleep("other", 0.2), node_id="other")
    graph.add_edge(from_id="broken", to_id="after")
    with pytest.raises(NodeExecutionError, match="'broken'") as caught:
        execute_graph(graph=graph, options=execution_options(scheduler="ray"))
    statuses = {n: caught.value.trace[n].status for n in ("broken", "after", "other")}
    assert statuses == {"broken": "failed", "after": "skipped", "other": "ok"}


def test_pmap_on_ray_matches_local_and_keeps_its_bound(cluster):
    from ember.operators import LMModule

    lm = LMModule(MODEL)
    prompts = [f"What is {k} * 7?" for k in range(6)]
    cluster.latency = 0.3
    try:
        local = pmap(lm, num_workers=2)(prompts)
        cluster.reset()
        remote = pmap(lm, num_workers=2, backend="ray")(prompts)
        stats = cluster.stats
    finally:
        cluster.latency = 0.0
    assert remote == local == [str(7 * k) for k in range(6)]
    assert stats.total == 6 and stats.max_in_flight <= 2

    with pytest.raises(ValueError, match="three") as caught:
        pmap(fail_on_three, num_workers=2, backend="ray")(list(range(6)))
    assert "(item 3 of 6 in pmap)" in caught.value.__notes__
    import jax.numpy as jnp

    with pytest.raises(TransformError, match="array work stays on the local devices"):
        pmap(lambda x: x * 2, backend="ray")(jnp.arange(4.0))


def test_without_ray_the_ray_scheduler_names_the_extra_to_install():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        from ember._runtime import RayNotInstalledError
        from ember.xcs import XCSGraph, execute_graph, execution_options
        graph = XCSGraph()
        graph.add_node(operator=lambda *, inputs: {"n": 1}, node_id="one")
        options = execution_options(scheduler="ray")  # choosing it needs no Ray
        try:
            execute_graph(graph=graph, options=options)
        except RayNotInstalledError as error:
            print("RAISED", error)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RAISED" in done.stdout and "ember-ai[ray]" in done.stdout


def test_a_models_limit_is_one_budget_across_the_ray_workers(cluster):
    """Two workers, each running one item at a time, share the model's single slot."""
    from ember.config import get_config_manager
    from ember.operators import LMModule

    manager = get_config_manager()
    manager.update_config("model_registry", {"default_max_concurrency": 1})
    cluster.latency = 0.2
    cluster.reset()
    try:
        answers = pmap(LMModule(MODEL), num_workers=2, backend="ray")([f"What is {k} * 3?" for k in range(4)])
        stats = cluster.stats
    finally:
        cluster.latency = 0.0
        manager.update_config("model_registry", {"default_max_concurrency": 64})
    assert answers == [str(3 * k) for k in range(4)]
    assert stats.total == 4 and stats.max_in_flight == 1
