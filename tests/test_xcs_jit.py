"""jit by asynchronous dispatch, and autograph: same results as eager, independent calls overlap."""

import json
import time

import pytest
from helpers import eventually

from ember.api import non
from ember.api.operators import EmberModel, LMModule, LMOperator, MostCommon, Operator, Record
from ember.models import ContextLengthExceededError
from ember.testing import Fault, default_responder
from ember.xcs import JITMode, autograph, execute_graph, execution_options, jit, jit_stats
from ember.xcs._lazy import Lazy

MODEL = "openai:gpt-4o-mini"



def bodies(records) -> list[str]:
    """The request bodies as canonical JSON, sorted (order may differ, content must not)."""
    return sorted(json.dumps(r.body, sort_keys=True) for r in records)


class Ask(Operator):
    """One model call: ``{"answer": <model's answer to "<prefix>: <query>">}``."""

    prefix: str = "q"
    model_name: str = MODEL

    def forward(self, *, inputs):
        return {"answer": LMModule(self.model_name)(f"{self.prefix}: {inputs.query}")}


class FourIndependent(Operator):
    a: Operator
    b: Operator
    c: Operator
    d: Operator

    def forward(self, *, inputs):
        first = self.a(inputs=inputs)
        second = self.b(inputs=inputs)
        third = self.c(inputs=inputs)
        fourth = self.d(inputs=inputs)
        return {"answers": [first["answer"], second["answer"], third["answer"], fourth["answer"]]}


def four() -> FourIndependent:
    return FourIndependent(Ask(prefix="a"), Ask(prefix="b"), Ask(prefix="c"), Ask(prefix="d"))


class Branching(Operator):
    classify: Operator
    if_yes: Operator
    if_no: Operator

    def forward(self, *, inputs):
        verdict = self.classify(inputs=inputs)
        if verdict["answer"] == "yes":  # control flow on a value: forces it
            return self.if_yes(inputs=inputs)
        return self.if_no(inputs=inputs)


def yes_if_shouted(request):
    message = request.last_user_message
    if message.startswith("classify:"):
        return "yes" if "YES" in message else "no"
    return default_responder(request)


# -- the seed's examples ----------------------------------------------------------------


def test_the_seed_jit_examples_run_as_written(loopback_models):
    @jit
    class MyEnsemble(Operator):
        def forward(self, *, inputs):
            ensemble = non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o")
            responses = ensemble(inputs={"query": inputs.query})
            return responses

    out = MyEnsemble()(inputs={"query": "What is 2 + 2?"})
    assert out.responses == ["4", "4", "4"]

    class RefinedQuery(EmberModel):
        query: str

    class QuestionRefinement(LMOperator):
        def forward(self, *, inputs):
            return RefinedQuery(query=self.lm(f"Refine: {inputs.query}"))

    @jit(mode=JITMode.ENHANCED)
    class Pipeline(Operator):
        refiner: QuestionRefinement
        ensemble: non.UniformEnsemble
        aggregator: MostCommon

        def __init__(self):
            self.refiner = QuestionRefinement("openai:gpt-4o")
            self.ensemble = non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o")
            self.aggregator = MostCommon()

        def forward(self, *, inputs):
            refined = self.refiner(inputs=inputs)
            answers = self.ensemble(inputs=refined)
            return self.aggregator(inputs=answers)

    pipeline = Pipeline()
    result = pipeline(inputs={"query": "capital of France?"})
    assert result.final_answer == '[gpt-4o] You said: "[gpt-4o] You said: "Refine: capital of France?""'
    plan = jit_stats(pipeline).last_plan
    assert [n.label for n in plan.nodes] == [
        "refiner: QuestionRefinement", "ensemble: UniformEnsemble", "aggregator: MostCommon"
    ]
    assert plan.edges == ((0, 1, "data"), (1, 2, "data"))  # passed unread: pure data dependencies
    assert plan.waves() == [[0], [1], [2]]
    exported = plan.to_graph()  # an XCSGraph, for pictures and inspection
    assert exported.levels() == [["refiner"], ["ensemble"], ["aggregator"]] and "UniformEnsemble" in exported.to_mermaid()


def test_the_seed_autograph_example_runs_as_written(loopback_models):
    op1, op2 = Ask(prefix="first"), Ask(prefix="second")

    class AskAnswer(Operator):  # reads the previous answer as its query
        def forward(self, *, inputs):
            return op2(inputs={"query": inputs.answer})

    op2_whole = AskAnswer()
    with autograph() as graph:
        intermediate = op1(inputs={"query": "Example"})
        result = op2_whole(inputs=intermediate)
    assert graph.edges == [("Ask_0", "AskAnswer_1")]
    results = execute_graph(graph=graph, options=execution_options(scheduler="wave", max_workers=4))
    assert results == result
    other = execute_graph(graph=graph, inputs={"query": "Other"})
    assert other["answer"] == '[gpt-4o-mini] You said: "second: [gpt-4o-mini] You said: "first: Other""'


def test_autograph_links_a_field_read_into_a_dict_and_reruns_with_new_inputs(loopback_models):
    first, second = Ask(prefix="one"), Ask(prefix="two")
    with autograph() as graph:
        a = first(inputs={"query": "x"})
        b = second(inputs={"query": a["answer"]})  # a field of a result: an edge answer -> query
    assert graph.edges == [("Ask_0", "Ask_1")]
    assert dict(graph.edge_mapping("Ask_0", "Ask_1")) == {"answer": "query"}
    for scheduler in ("sequential", "wave", "parallel", "auto"):
        assert execute_graph(graph=graph, options=execution_options(scheduler=scheduler)) == b
    rerun = execute_graph(graph=graph, inputs={"query": "y"})
    assert rerun["answer"] == '[gpt-4o-mini] You said: "two: [gpt-4o-mini] You said: "one: y""'
    assert "flowchart TD" in graph.to_mermaid() and "Ask" in graph.to_mermaid()


# -- overlap, identical results, cache --------------------------------------------------


def test_four_independent_calls_are_all_in_flight_at_once_and_match_eager(loopback_models):
    server = loopback_models.server
    server.latency = 0.3
    op = four()
    begun = time.perf_counter()
    eager = op(inputs={"query": "hello"})
    eager_s = time.perf_counter() - begun
    eager_bodies = bodies(server.requests)
    assert server.stats.max_in_flight == 1
    server.reset()

    fast = jit(op)
    begun = time.perf_counter()
    jitted = fast(inputs={"query": "hello"})
    jit_s = time.perf_counter() - begun
    assert jitted == eager
    assert server.stats.max_in_flight == 4
    assert bodies(server.requests) == eager_bodies
    assert jit_s < eager_s / 2

    stats = jit_stats(fast)
    assert (stats.hits, stats.misses, stats.calls) == (0, 1, 4)
    assert fast(inputs={"query": "again"}) == op(inputs={"query": "again"})
    assert (stats.hits, stats.misses, stats.calls) == (1, 1, 8)
    assert stats.trace_time_s > 0 and stats.run_time_s > 0
    assert stats.last_plan.waves() == [[0, 1, 2, 3]]


def test_a_branch_on_a_sub_result_gives_the_same_outputs_and_requests_as_eager(loopback_models):
    server = loopback_models.server
    server.responder = yes_if_shouted
    op = Branching(Ask(prefix="classify"), Ask(prefix="yes-branch"), Ask(prefix="no-branch"))
    fast = jit(op, mode="trace")
    for query in ("YES please", "nope", "YES again"):
        server.reset()
        eager = op(inputs={"query": query})
        eager_bodies = bodies(server.requests)
        server.reset()
        jitted = fast(inputs={"query": query})
        assert jitted == eager
        assert bodies(server.requests) == eager_bodies
        assert ("yes-branch" in jitted["answer"]) == ("YES" in query)
    plan = jit_stats(fast).last_plan
    assert plan.mode == "trace" and plan.edges == ((0, 1, "read"),)  # the branch read the verdict first


def test_a_failing_sub_call_raises_the_eager_error_and_cancels_the_others(loopback_models):
    server = loopback_models.server
    server.latency = 0.05
    op = four()
    server.faults = [Fault.context_length(on=[0]), Fault.slow(3.0)]
    with pytest.raises(ContextLengthExceededError):
        op(inputs={"query": "boom"})
    assert len(server.requests) == 1  # eager stops at the first call

    server.reset()
    server.faults = [Fault.context_length(on=[0]), Fault.slow(3.0)]
    begun = time.monotonic()
    with pytest.raises(ContextLengthExceededError):
        jit(op)(inputs={"query": "boom"})
    assert time.monotonic() - begun < 2.0
    assert eventually(lambda: sum(r.client_closed for r in server.requests) == 3)


# -- targets and modes ------------------------------------------------------------------


def test_jit_on_a_plain_function_overlaps_its_calls(loopback_models):
    server = loopback_models.server
    server.latency = 0.2
    ops = [Ask(prefix=p) for p in "wxyz"]

    def fan_out(query):
        results = [op(inputs={"query": query}) for op in ops]
        return [r["answer"] for r in results]

    eager = fan_out("hi")
    server.reset()
    fast = jit(fan_out)
    assert fast("hi") == eager and server.stats.max_in_flight == 4
    assert fast.stats.misses == 1 and fast.stats.last_plan.calls == 4
    assert jit_stats(fast) is fast.stats


@pytest.mark.parametrize("mode", [None, "trace", "structural", "enhanced", JITMode.ENHANCED])
def test_every_mode_gives_eager_results_and_records_its_plan(loopback_models, mode):
    op = four()
    jitted = jit(op, mode=mode)
    assert isinstance(jitted, FourIndependent) and jitted.a is op.a
    assert jitted(inputs={"query": "m"}) == op(inputs={"query": "m"})
    stats = jit_stats(jitted)
    plan = stats.last_plan
    if mode == "structural":
        assert plan.mode == "structural" and [n.path for n in plan.nodes] == ["a", "b", "c", "d"]
        assert not any(n.observed for n in plan.nodes)
    elif mode == "trace":
        assert plan.mode == "trace" and [n.path for n in plan.nodes] == [None] * 4
    else:  # enhanced, and auto on an operator with sub-operator fields
        assert plan.mode == "enhanced" and [n.label for n in plan.nodes] == ["a: Ask", "b: Ask", "c: Ask", "d: Ask"]
    assert stats.summary()["misses"] == 1
    assert "flowchart TD" in plan.to_mermaid()


def test_jit_rejects_unknown_modes_and_non_callables():
    with pytest.raises(ValueError, match="unknown JIT mode 'fast'"):
        jit(lambda: None, mode="fast")
    with pytest.raises(TypeError):
        jit(42)


def test_lazy_results_read_like_values(loopback_models):
    seen = {}

    @jit
    def probe():
        result = Ask(prefix="p")(inputs={"query": "v"})
        seen["lazy"] = type(result) is Lazy
        seen["isinstance"] = isinstance(result, dict)
        seen["keys"] = sorted(result)
        seen["len"] = len(result)
        seen["contains"] = "answer" in result
        seen["eq"] = result == {"answer": '[gpt-4o-mini] You said: "p: v"'}
        return {"nested": [result]}

    @jit
    def wrapped():
        return Record(inner=Ask(prefix="r")(inputs={"query": "w"}))  # a model that takes any value

    assert type(wrapped().inner) is dict
    out = probe()
    assert out == {"nested": [{"answer": '[gpt-4o-mini] You said: "p: v"'}]}
    assert type(out["nested"][0]) is dict  # returned values are resolved, not proxies
    assert seen == {"lazy": True, "isinstance": True, "keys": ["answer"], "len": 1, "contains": True, "eq": True}


class Pair(Operator):
    left: Operator
    right: Operator

    def forward(self, *, inputs):
        left, right = self.left(inputs=inputs), self.right(inputs=inputs)  # both issued before either is read
        return {"left": left["answers"], "right": right["answer"]}


def test_jitted_operators_nest_and_stay_frozen(loopback_models):
    server = loopback_models.server
    server.latency = 0.2
    plain = Pair(four(), Ask(prefix="x"))
    eager = plain(inputs={"query": "n"})
    server.reset()
    outer = jit(Pair(jit(four()), Ask(prefix="x")))
    assert outer(inputs={"query": "n"}) == eager
    assert server.stats.max_in_flight == 5  # the inner jit's four calls overlap the outer's other call
    with pytest.raises(Exception, match="frozen"):
        outer.left = None


def test_an_enhanced_plan_shows_the_branch_not_taken_and_subclasses_stay_jitted(loopback_models):
    loopback_models.server.responder = yes_if_shouted

    @jit
    class Jitted(Branching):
        pass

    class Sub(Jitted):  # a subclass of a jitted class inherits the jitted forward
        pass

    op = Sub(Ask(prefix="classify"), Ask(prefix="yes-branch"), Ask(prefix="no-branch"))
    assert op(inputs={"query": "YES"})["answer"] == '[gpt-4o-mini] You said: "yes-branch: YES"'
    plan = jit_stats(op).last_plan
    assert plan.mode == "enhanced"
    assert [(n.label, n.observed) for n in plan.nodes] == [
        ("classify: Ask", True), ("if_yes: Ask", True), ("if_no: Ask", False)
    ]
    assert plan.calls == 2 and plan.waves() == [[0], [1]]
