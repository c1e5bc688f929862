"""Async operators: ``acall`` answers as ``__call__`` does, sync operators still work through it,
a failure cancels its siblings, and an evaluation of built-in operators spends no thread per item."""

import asyncio
import concurrent.futures
import json
import threading

import pytest
from helpers import eventually

from ember._runtime import Cancelled, UsageScope, open_scope, submit
from ember.api import non
from ember.data import DatasetItem
from ember.eval import ExactMatchEvaluator, NumericEvaluator, compare_systems
from ember.operators import (
    JudgeSynthesis,
    LMModule,
    MostCommon,
    Operator,
    Parallel,
    SelectBest,
    Sequential,
    StructuredOutputError,
    Synthesis,
    Verifier,
)
from ember.testing import Fault, default_responder

MODEL = "openai:gpt-4o-mini"
QUERY = "What is 17 * 23?"
CANDIDATES = {"query": QUERY, "responses": ["391", "390"]}


def responder(request):
    """Arithmetic for generators; fixed JSON for the operators that ask for it."""
    prompt = request.last_user_message
    if prompt.startswith("You are a judge"):
        return json.dumps({"reasoning": "checked", "final_answer": "391"})
    if prompt.startswith("Check whether"):
        verdict = "Candidate answer:\n391" in prompt
        return json.dumps({"verdict": verdict, "explanation": "checked", "revised_answer": "391"})
    if prompt.startswith("Several candidate answers to a question follow. Decide"):
        return json.dumps({"reasoning": "the first adds up", "best_candidate": 1})
    return default_responder(request)


@pytest.fixture
def server(loopback_models):
    loopback_models.server.responder = responder
    return loopback_models.server


def on_io_loop(coro):
    """Run ``coro`` on Ember's I/O loop, as the evaluation pipeline does, and wait for it."""
    return submit(coro).result()


def sent(server):
    """What was asked, in a comparable form: (model, messages, temperature) of every request, sorted."""
    return sorted(json.dumps([r.model, r.body["messages"], r.body.get("temperature")]) for r in server.requests)


BUILT_IN = {
    "uniform ensemble": (lambda: non.UniformEnsemble(num_units=3, model_name=MODEL), {"query": QUERY}),
    "varied ensemble": (lambda: non.VariedEnsemble(model_names=[MODEL, "anthropic:claude-3-5-sonnet"]), {"query": QUERY}),
    "judge": (lambda: JudgeSynthesis(MODEL), CANDIDATES),
    "synthesis": (lambda: Synthesis(MODEL), CANDIDATES),
    "select best": (lambda: SelectBest(MODEL), CANDIDATES),
    "verifier": (lambda: Verifier(MODEL), {"query": QUERY, "candidate_answer": "391"}),
    "most common": (lambda: MostCommon(), {"responses": ["391", "390", "391"]}),
    "sequential": (
        lambda: Sequential([non.UniformEnsemble(num_units=3, model_name=MODEL), JudgeSynthesis(MODEL)]),
        {"query": QUERY},
    ),
    "parallel": (
        lambda: Parallel(
            [
                non.UniformEnsemble(num_units=2, model_name=MODEL),
                Sequential([non.UniformEnsemble(num_units=2, model_name=MODEL), MostCommon()]),
            ]
        ),
        {"query": QUERY},
    ),
    "filter": (lambda: non.Filter(MODEL), CANDIDATES),
    "vote": (lambda: non.Vote(MODEL, num_calls=3), {"query": QUERY}),
    "filter vote": (lambda: non.FilterVote(MODEL, num_calls=3), {"query": QUERY}),
}


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_acall_answers_and_asks_as_call_does(server, name):
    build, inputs = BUILT_IN[name]
    op = build()
    expected = op(inputs=inputs)
    asked = sent(server)
    server.reset()
    assert on_io_loop(op.acall(inputs=inputs)) == expected
    assert sent(server) == asked
    server.reset()
    assert asyncio.run(op.acall(**inputs)) == expected  # from another event loop, keyword fields
    assert sent(server) == asked


def test_structured_repair_is_the_same_awaited(server):
    """An unparsable first answer gets the one repair call on both paths; a second failure raises alike."""
    answers = {"sync": [], "async": []}

    def once_bad(request):
        bad = len(server.requests) % 2 == 1  # the first request of each pair: not JSON
        return "no JSON here" if bad else responder(request)

    server.responder = once_bad
    verifier = Verifier(MODEL)
    inputs = {"query": QUERY, "candidate_answer": "391"}
    answers["sync"] = verifier(inputs=inputs)
    asked = sent(server)
    server.reset()
    answers["async"] = on_io_loop(verifier.acall(inputs=inputs))
    assert answers["sync"] == answers["async"] and answers["sync"].verdict
    assert sent(server) == asked and len(asked) == 2

    server.responder = lambda request: "never JSON"
    with pytest.raises(StructuredOutputError) as sync_error:
        verifier(inputs=inputs)
    with pytest.raises(StructuredOutputError) as async_error:
        on_io_loop(verifier.acall(inputs=inputs))
    assert (sync_error.value.attempts, str(sync_error.value)) == (async_error.value.attempts, str(async_error.value))


def test_invalid_inputs_are_rejected_alike(server):
    from ember.operators import InvalidInputError

    judge = JudgeSynthesis(MODEL)
    with pytest.raises(InvalidInputError):
        on_io_loop(judge.acall(inputs={"query": QUERY}))  # no responses
    with pytest.raises(TypeError, match="not both"):
        on_io_loop(judge.acall(inputs=CANDIDATES, query=QUERY))
    assert server.stats.total == 0


class Shout(Operator):
    """A user's operator with only a synchronous forward that calls a model itself."""

    model: str = MODEL

    def forward(self, *, inputs):
        return {"answer": LMModule(self.model)(inputs.query).upper(), "thread": threading.current_thread().name}


def test_a_sync_operator_works_through_acall_on_a_worker_thread_in_the_callers_scopes(server):
    async def main():
        with UsageScope() as used:
            out = await Shout().acall(query="What is 2 + 3?")
        return out, used

    out, used = on_io_loop(main())
    assert out["answer"] == "5" and out["thread"] not in ("ember-io", threading.current_thread().name)
    assert (used.calls, used.usage.total_tokens > 0) == (1, True)  # the usage scope reached the thread

    async def cancelled():
        with open_scope() as scope:
            scope.cancel("stop")
            await Shout().acall(query="What is 2 + 3?")

    server.reset()
    with pytest.raises(Cancelled):  # so did the cancel scope: the thread's call never went out
        on_io_loop(cancelled())
    assert server.stats.total == 0


def test_a_sync_stage_inside_an_async_pipeline(server):
    pipeline = Sequential([Shout(), non.UniformEnsemble(num_units=2, model_name=MODEL)])
    assert on_io_loop(pipeline.acall(query="What is 2 + 3?")) == pipeline(query="What is 2 + 3?")


def closed_requests(server) -> int:
    return sum(r.client_closed for r in server.requests)


@pytest.mark.parametrize("shape", ["ensemble", "parallel"])
def test_a_failing_member_cancels_its_siblings_and_closes_their_requests(server, shape):
    from ember.models import ContextLengthExceededError

    # Request 2 fails at once (not retryable); the other three would take 30 s to answer.
    server.faults = [Fault.context_length(on=[2]), Fault.slow(30.0)]
    if shape == "ensemble":
        op = non.UniformEnsemble(num_units=4, model_name=MODEL)
    else:
        op = Parallel([non.UniformEnsemble(num_units=2, model_name=MODEL) for _ in range(2)])
    with pytest.raises(ContextLengthExceededError):  # the error itself, not an ExceptionGroup
        on_io_loop(op.acall(query=QUERY))
    assert eventually(lambda: closed_requests(server) >= 3)
    records = server.requests
    assert len(records) == 4 and sum(r.client_closed for r in records) == 3
    assert server.stats.in_flight == 0


class CountingPool:
    """Counts the work the evaluation hands to its worker threads."""

    def __init__(self, monkeypatch):
        self.submitted = 0
        original = concurrent.futures.ThreadPoolExecutor.submit

        def submit(pool, fn, /, *args, **kwargs):
            if pool._thread_name_prefix.startswith("ember-eval"):
                self.submitted += 1
            return original(pool, fn, *args, **kwargs)

        monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", submit)


def test_an_ensemble_judge_eval_runs_its_items_without_worker_threads(server, monkeypatch):
    pool = CountingPool(monkeypatch)
    items = [DatasetItem(f"i{i}", f"What is {i} + 1?", str(i + 1)) for i in range(20)]
    server.responder = default_responder
    results = compare_systems(
        items, {"ens+judge": f"5:E:{MODEL}:0.7,1:J:{MODEL}:0.0"}, [NumericEvaluator()], concurrency=8, progress=False
    )["ens+judge"]
    assert (results.n_items, results.n_errors, results.accuracy, results.calls) == (20, 0, 1.0, 120)
    assert pool.submitted == 0

    # The same eval of a user's sync operator: one worker-thread job per item, on the eval's pool.
    results = compare_systems(items[:5], {"shout": Shout()}, [ExactMatchEvaluator()], concurrency=8, progress=False)["shout"]
    assert (results.n_items, results.n_errors, results.calls) == (5, 0, 5)
    assert pool.submitted == 5
