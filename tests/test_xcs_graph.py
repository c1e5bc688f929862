"""The graph engine, from the user's side: building and validating graphs, the three
schedulers (compared by recorded start and end times), typed errors that name nodes,
cancellation that closes requests, options scoping, traces and pictures."""

import json
import threading
import time

import pytest
from helpers import eventually
from hypothesis import given, settings
from hypothesis import strategies as st

from ember._runtime import UsageScope, open_scope
from ember.testing import Fault
from ember.xcs import (
    CycleError,
    DuplicateNodeError,
    ExecutionOptions,
    ExecutionOptionsError,
    FieldConflictError,
    GraphError,
    GraphTimeoutError,
    MissingInputError,
    MissingNodeError,
    NodeExecutionError,
    XCSGraph,
    current_execution_options,
    execute_graph,
    execution_options,
)

MODEL = "openai:gpt-4o"
SCHEDULERS = ("sequential", "wave", "parallel", "auto")



def judge_responder(request) -> str:
    if "You are a judge" in request.last_user_message:
        return json.dumps({"reasoning": "they agree", "final_answer": "qubits"})
    return "Quantum computing uses qubits."


class Sleep:
    """A plain Python operator: sleeps, then returns ``{name: True}``."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name, self.seconds = name, seconds

    def __call__(self, *, inputs):
        time.sleep(self.seconds)
        return {self.name: True}


class Fail:
    def __call__(self, *, inputs):
        raise ValueError("boom")


# -- the seed example --------------------------------------------------------------------


def test_seed_example_runs_as_written_with_the_wave_scheduler(loopback_models):
    from ember.api import non

    server = loopback_models.server
    server.responder = judge_responder
    server.latency = 0.2
    ensemble = non.UniformEnsemble(num_units=3, model_name=MODEL)
    judge = non.JudgeSynthesis(model_name=MODEL)

    graph = XCSGraph()
    graph.add_node(operator=ensemble, node_id="ensemble")
    graph.add_node(operator=judge, node_id="judge")
    graph.add_edge(from_id="ensemble", to_id="judge")
    with execution_options(scheduler="wave", max_workers=4):
        result = execute_graph(graph=graph, inputs={"query": "What is quantum computing?"})

    assert result.final_answer == "qubits"
    records = server.requests
    assert len(records) == 4
    samples, judged = records[:3], records[3]
    assert max(r.arrived for r in samples) < min(r.finished for r in samples)  # all three in flight together
    assert judged.arrived >= max(r.finished for r in samples)
    assert "What is quantum computing?" in json.dumps(judged.body)


def test_trace_counts_each_nodes_tokens_and_the_enclosing_usage_scope_sees_them(loopback_models):
    from ember.api import non

    loopback_models.server.responder = judge_responder
    graph = XCSGraph()
    graph.add_node(operator=non.UniformEnsemble(num_units=3, model_name=MODEL), node_id="ensemble")
    graph.add_node(operator=non.JudgeSynthesis(model_name=MODEL), node_id="judge")
    graph.add_edge(from_id="ensemble", to_id="judge")
    with UsageScope() as used:
        _, trace = execute_graph(graph=graph, inputs={"query": "q?"}, trace=True)
    assert trace["ensemble"].calls == 3 and trace["judge"].calls == 1
    assert trace["ensemble"].input_tokens > 0 and trace["judge"].output_tokens > 0
    assert used.calls == 4 and used.usage.total_tokens == trace.total_tokens


# -- schedulers ---------------------------------------------------------------------------


def slow_branch_beside_chain() -> XCSGraph:
    graph = XCSGraph()
    graph.add_node(operator=Sleep("slow", 0.6), node_id="slow")
    for k in range(3):
        graph.add_node(operator=Sleep(f"c{k}", 0.2), node_id=f"c{k}")
    graph.add_edge(from_id="c0", to_id="c1")
    graph.add_edge(from_id="c1", to_id="c2")
    return graph


def test_parallel_starts_the_chain_without_waiting_for_the_slow_branch():
    _, trace = execute_graph(graph=slow_branch_beside_chain(), options=execution_options(scheduler="parallel"), trace=True)
    slow_end = trace["slow"].end
    assert trace["c1"].start < slow_end and trace["c2"].start < slow_end
    assert trace.duration < 0.95  # about max(0.6, 3 x 0.2), not 0.6 + 0.4


def test_wave_holds_each_level_until_the_slow_branch_ends():
    _, trace = execute_graph(graph=slow_branch_beside_chain(), options=execution_options(scheduler="wave"), trace=True)
    slow_end = trace["slow"].end
    assert trace["c1"].start >= slow_end and trace["c2"].start >= trace["c1"].end
    assert trace.scheduler == "wave"


def test_max_workers_bounds_how_many_nodes_run_at_once():
    running, most = [0], [0]
    lock = threading.Lock()

    def op(*, inputs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return {}

    graph = XCSGraph()
    for k in range(8):
        graph.add_node(operator=op, node_id=f"n{k}")
    execute_graph(graph=graph, options=execution_options(scheduler="parallel", max_workers=2))
    assert most[0] == 2


def test_auto_picks_sequential_for_a_chain_and_parallel_otherwise():
    chain = XCSGraph()
    chain.add_node(operator=Sleep("a", 0), node_id="a")
    _, trace = execute_graph(graph=chain, trace=True)
    assert trace.scheduler == "sequential"
    _, trace = execute_graph(graph=slow_branch_beside_chain(), trace=True)
    assert trace.scheduler == "parallel"


def test_return_shapes_single_sink_several_sinks_and_all():
    graph = XCSGraph()
    graph.add_node(operator=lambda *, inputs: {"x": 1}, node_id="a")
    graph.add_node(operator=lambda *, inputs: {"y": inputs["x"] + 1}, node_id="b")
    graph.add_edge(from_id="a", to_id="b")
    assert execute_graph(graph=graph) == {"y": 2}
    graph.add_node(operator=lambda *, inputs: {"z": 3}, node_id="c")
    assert execute_graph(graph=graph) == {"b": {"y": 2}, "c": {"z": 3}}
    assert execute_graph(graph=graph, outputs="all") == {"a": {"x": 1}, "b": {"y": 2}, "c": {"z": 3}}


def test_edge_mapping_renames_fields_and_resolves_a_conflict():
    graph = XCSGraph()
    graph.add_node(operator=lambda *, inputs: {"answer": "a"}, node_id="left")
    graph.add_node(operator=lambda *, inputs: {"answer": "b"}, node_id="right")
    graph.add_node(operator=lambda *, inputs: dict(inputs), node_id="join")
    graph.add_edge(from_id="left", to_id="join")
    graph.add_edge(from_id="right", to_id="join", mapping={"answer": "other"})
    assert execute_graph(graph=graph, inputs={"q": 1}) == {"q": 1, "answer": "a", "other": "b"}


# -- typed errors ------------------------------------------------------------------------


def test_building_errors_are_typed_and_name_the_nodes():
    graph = XCSGraph()
    for name in ("a", "b", "c"):
        graph.add_node(operator=Sleep(name, 0), node_id=name)
    with pytest.raises(DuplicateNodeError, match="'a'"):
        graph.add_node(operator=Sleep("a", 0), node_id="a")
    with pytest.raises(MissingNodeError, match="'d'"):
        graph.add_edge(from_id="a", to_id="d")
    graph.add_edge(from_id="a", to_id="b")
    graph.add_edge(from_id="b", to_id="c")
    with pytest.raises(CycleError) as caught:
        graph.add_edge(from_id="c", to_id="a")
    assert caught.value.cycle == ("c", "a", "b", "c")
    assert "c -> a -> b -> c" in str(caught.value)
    assert graph.edges == [("a", "b"), ("b", "c")]  # the rejected edge was not added
    assert all(isinstance(e, GraphError) for e in (caught.value,))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_missing_input_names_the_node_and_the_field(scheduler):
    from ember.operators import JudgeSynthesis

    graph = XCSGraph()
    graph.add_node(operator=lambda *, inputs: {"responses": ["x"]}, node_id="gen")
    graph.add_node(operator=JudgeSynthesis(model_name=MODEL), node_id="judge")
    graph.add_edge(from_id="gen", to_id="judge")
    with pytest.raises(MissingInputError, match=r"'judge'.*'query'") as caught:
        execute_graph(graph=graph, options=execution_options(scheduler=scheduler))
    assert caught.value.node_id == "judge" and caught.value.trace["judge"].status == "failed"


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_two_predecessors_writing_one_field_is_a_conflict(scheduler):
    graph = XCSGraph()
    graph.add_node(operator=lambda *, inputs: {"answer": 1}, node_id="left")
    graph.add_node(operator=lambda *, inputs: {"answer": 2}, node_id="right")
    graph.add_node(operator=lambda *, inputs: dict(inputs), node_id="join")
    graph.add_edge(from_id="left", to_id="join")
    graph.add_edge(from_id="right", to_id="join")
    with pytest.raises(FieldConflictError) as caught:
        execute_graph(graph=graph, options=execution_options(scheduler=scheduler))
    error = caught.value
    assert (error.node_id, error.field, set(error.writers)) == ("join", "answer", {"left", "right"})


def test_conflicts_visible_from_declared_output_models_fail_before_anything_runs():
    from ember.non import UniformEnsemble

    graph = XCSGraph()
    graph.add_node(operator=UniformEnsemble(num_units=2, model_name=MODEL), node_id="e1")
    graph.add_node(operator=UniformEnsemble(num_units=2, model_name=MODEL), node_id="e2")
    graph.add_node(operator=lambda *, inputs: {}, node_id="join")
    graph.add_edge(from_id="e1", to_id="join")
    graph.add_edge(from_id="e2", to_id="join")
    with pytest.raises(FieldConflictError, match=r"'e1' and 'e2'.*'responses'"):
        execute_graph(graph=graph, inputs={"query": "q"})  # no server: nothing may run


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_failing_node_is_named_chains_its_cause_and_skips_its_dependents(scheduler):
    graph = XCSGraph()
    graph.add_node(operator=Fail(), node_id="bad")
    graph.add_node(operator=Sleep("after", 0), node_id="after")
    graph.add_node(operator=Sleep("other", 0.05), node_id="other")
    graph.add_edge(from_id="bad", to_id="after")
    with pytest.raises(NodeExecutionError, match=r"'bad'.*boom") as caught:
        execute_graph(graph=graph, options=execution_options(scheduler=scheduler))
    error = caught.value
    assert error.node_id == "bad" and isinstance(error.__cause__, ValueError)
    statuses = {n: r.status for n, r in error.trace.nodes.items()}
    assert statuses == {"bad": "failed", "after": "skipped", "other": "ok"}  # cancel_dependents
    assert "boom" in error.trace["bad"].error


def test_cancel_all_stops_unrelated_nodes_too():
    graph = XCSGraph()
    graph.add_node(operator=Fail(), node_id="bad")
    for k in range(4):
        graph.add_node(operator=Sleep(f"s{k}", 0.05), node_id=f"s{k}")
        if k:
            graph.add_edge(from_id=f"s{k - 1}", to_id=f"s{k}")
    with pytest.raises(NodeExecutionError) as caught:
        execute_graph(graph=graph, options=execution_options(scheduler="parallel", on_error="cancel_all"))
    assert caught.value.trace["s3"].status == "skipped"


# -- cancellation closes requests --------------------------------------------------------


def slow_call_beside(graph_node, server):
    from ember.non import UniformEnsemble

    server.faults = [Fault.slow(30.0)]
    graph = XCSGraph()
    graph.add_node(operator=UniformEnsemble(num_units=2, model_name=MODEL), node_id="slow_call")
    if graph_node is not None:
        graph.add_node(operator=graph_node, node_id="other")
    return graph


def test_a_failure_under_cancel_all_closes_the_in_flight_requests(loopback_models):
    server = loopback_models.server

    def fail_once_requests_are_out(*, inputs):
        eventually(lambda: len(server.requests) == 2)
        raise ValueError("fast failure")

    graph = slow_call_beside(fail_once_requests_are_out, server)
    begun = time.monotonic()
    with pytest.raises(NodeExecutionError, match="'other'"):
        execute_graph(graph=graph, inputs={"query": "q"},
                      options=execution_options(scheduler="parallel", on_error="cancel_all"))
    assert time.monotonic() - begun < 5
    assert eventually(lambda: sum(r.client_closed for r in server.requests) == 2)


def test_a_timeout_cancels_the_run_and_closes_its_requests(loopback_models):
    server = loopback_models.server
    graph = slow_call_beside(None, server)
    begun = time.monotonic()
    with pytest.raises(GraphTimeoutError, match="slow_call") as caught:
        execute_graph(graph=graph, inputs={"query": "q"}, options=execution_options(timeout=0.5))
    assert time.monotonic() - begun < 3
    assert caught.value.trace["slow_call"].status == "cancelled"
    assert eventually(lambda: sum(r.client_closed for r in server.requests) == 2)


def test_cancelling_an_enclosing_scope_closes_the_graphs_requests(loopback_models):
    from ember._runtime import Cancelled

    server = loopback_models.server
    graph = slow_call_beside(Sleep("x", 0), server)
    with pytest.raises(Cancelled), open_scope() as scope:
        threading.Timer(0.5, scope.cancel, ("user stopped it",)).start()
        execute_graph(graph=graph, inputs={"query": "q"}, options=execution_options(scheduler="wave"))
    assert eventually(lambda: sum(r.client_closed for r in server.requests) == 2)


# -- property: every scheduler agrees with sequential ------------------------------------


class AddNode:
    """Sums the values of its inputs whose keys are its predecessors', plus a constant."""

    def __init__(self, name: str, preds: list[str], constant: int) -> None:
        self.name, self.preds, self.constant = name, preds, constant

    def __call__(self, *, inputs):
        return {self.name: self.constant + sum(inputs[p] for p in self.preds) + inputs["seed"]}


@st.composite
def dags(draw):
    n = draw(st.integers(1, 9))
    edges = [(i, j) for j in range(n) for i in range(j) if draw(st.booleans())]
    constants = draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n))
    return n, edges, constants


@settings(max_examples=50, deadline=None)
@given(dags(), st.sampled_from(["wave", "parallel", "auto"]), st.integers(1, 4))
def test_every_scheduler_agrees_with_sequential_and_respects_dependencies(dag, scheduler, workers):
    n, edges, constants = dag
    graph = XCSGraph()
    for j in range(n):
        preds = [f"n{i}" for i, k in edges if k == j]
        graph.add_node(operator=AddNode(f"n{j}", preds, constants[j]), node_id=f"n{j}")
    for i, j in edges:
        graph.add_edge(from_id=f"n{i}", to_id=f"n{j}")
    expected = execute_graph(graph=graph, inputs={"seed": 1}, outputs="all",
                             options=execution_options(scheduler="sequential"))
    got, trace = execute_graph(graph=graph, inputs={"seed": 1}, outputs="all", trace=True,
                               options=execution_options(scheduler=scheduler, max_workers=workers))
    assert got == expected
    for i, j in edges:
        assert trace[f"n{j}"].start >= trace[f"n{i}"].end


# -- options -------------------------------------------------------------------------------


def test_execution_options_nest_and_merge():
    assert current_execution_options() == ExecutionOptions()
    with execution_options(scheduler="wave", timeout=5) as outer:
        assert outer.scheduler == "wave"
        with execution_options(max_workers=2):
            assert current_execution_options() == ExecutionOptions("wave", 2, 5, "cancel_dependents")
        assert current_execution_options().max_workers is None
    assert current_execution_options() == ExecutionOptions()


def test_execution_options_as_a_value_apply_on_top_of_the_block():
    with execution_options(scheduler="wave"):
        assert execution_options(max_workers=3).resolve() == ExecutionOptions("wave", 3)


def test_execution_options_are_isolated_per_thread():
    seen = {}
    barrier = threading.Barrier(2, timeout=5)

    def worker(name, scheduler):
        with execution_options(scheduler=scheduler):
            barrier.wait()  # both blocks are open at once
            seen[name] = current_execution_options().scheduler
            barrier.wait()

    threads = [threading.Thread(target=worker, args=(k, s)) for k, s in (("a", "wave"), ("b", "parallel"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "wave", "b": "parallel"}
    assert current_execution_options().scheduler == "auto"


def test_bad_options_are_typed_errors_with_suggestions():
    with pytest.raises(ExecutionOptionsError, match="Did you mean: wave"):
        execution_options(scheduler="wav")
    with pytest.raises(ExecutionOptionsError, match="Did you mean: max_workers"):
        execution_options(max_worker=2)
    with pytest.raises(ExecutionOptionsError):
        execution_options(max_workers=0)
    with pytest.raises(ExecutionOptionsError):
        ExecutionOptions(on_error="ignore")


# -- pictures and traces -----------------------------------------------------------------


def test_mermaid_and_dot_contain_every_node_and_edge():
    graph = slow_branch_beside_chain()
    graph.add_edge(from_id="slow", to_id="c2", mapping={"slow": "was_slow"})
    mermaid, dot = graph.to_mermaid(), graph.to_dot()
    assert mermaid.startswith("flowchart") and dot.startswith("digraph")
    for node in graph.nodes:
        assert node in mermaid and f'"{node}"' in dot
    assert mermaid.count("-->") == len(graph.edges) == 3
    for a, b in graph.edges:
        assert f'"{a}" -> "{b}"' in dot
    assert "slow→was_slow" in mermaid and "slow→was_slow" in dot


def test_perfetto_json_has_one_event_per_node(tmp_path):
    graph = slow_branch_beside_chain()
    _, trace = execute_graph(graph=graph, options=execution_options(scheduler="parallel"), trace=True)
    events = json.loads(trace.to_perfetto())
    assert sorted(e["name"] for e in events) == sorted(graph.nodes)
    assert all(e["ph"] == "X" and e["dur"] > 0 and {"ts", "pid", "tid", "args"} <= e.keys() for e in events)
    path = tmp_path / "trace.json"
    trace.save(path)
    assert json.loads(path.read_text()) == events
    assert "slow" in trace.table()


def test_graph_queries():
    graph = slow_branch_beside_chain()
    assert graph.sources == ["slow", "c0"] and graph.sinks == ["slow", "c2"]
    assert graph.predecessors("c1") == ["c0"] and graph.successors("c1") == ["c2"]
    assert graph.levels() == [["slow", "c0"], ["c1"], ["c2"]]
    assert graph.topological_order() == ["slow", "c0", "c1", "c2"]
    auto = graph.add_node(operator=Sleep("x", 0))
    assert auto in graph and auto.startswith("Sleep_")
    with pytest.raises(MissingNodeError):
        graph.predecessors("nope")
