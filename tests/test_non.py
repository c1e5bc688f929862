"""NON patterns against a loopback server: real concurrency, the query reaches the judge,
compact notation runs, Vote and FilterVote."""

import json

import pytest

from ember.api import non
from ember.api.operators import Operator
from ember.operators import EnsembleInput, EnsembleOutput, LMModule
from ember.testing import default_responder

QUERY = "What is 17 * 23?"


def responder(request):
    """Arithmetic for generators; JSON for judges and verifiers (accepting every candidate)."""
    prompt = request.last_user_message
    if prompt.startswith("You are a judge"):
        return json.dumps({"reasoning": f"{request.model} judged", "final_answer": "391"})
    if prompt.startswith("Check whether"):
        verdict = "Candidate answer:\n391" in prompt
        return json.dumps({"verdict": verdict, "explanation": "checked", "revised_answer": "391"})
    return default_responder(request)


@pytest.fixture
def server(loopback_models):
    loopback_models.server.responder = responder
    return loopback_models.server


def prompts_of(server, model):
    return [
        m["content"] for r in server.requests if r.model == model for m in r.body["messages"] if m["role"] == "user"
    ]


def test_seed_uniform_ensemble(server):
    ensemble = non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o")
    assert ensemble(inputs={"query": QUERY}).responses == ["391"] * 3
    assert server.stats.total == 3


def test_ensemble_of_eight_has_eight_requests_in_flight_at_once(server):
    server.latency = 0.1
    ensemble = non.UniformEnsemble(num_units=8, model_name="openai:gpt-4o")
    assert len(ensemble(query=QUERY).responses) == 8
    assert server.stats.max_in_flight == 8


def test_varied_ensemble_sends_each_member_its_model_and_temperature(server):
    ensemble = non.VariedEnsemble(
        model_names=["openai:gpt-4o", "anthropic:claude-3-5-sonnet", "openai:gpt-4o-mini"], temperatures=[0.1, 0.5, 0.9]
    )
    ensemble(query=QUERY)
    sent = sorted((r.model, r.body["temperature"]) for r in server.requests)
    assert sent == [("claude-3-5-sonnet-latest", 0.5), ("gpt-4o", 0.1), ("gpt-4o-mini", 0.9)]


def test_judge_after_an_ensemble_still_sees_the_original_query(server):
    pipeline = non.Sequential(
        [
            non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o"),
            non.JudgeSynthesis("anthropic:claude-3-5-sonnet"),
        ]
    )
    out = pipeline(inputs={"query": QUERY})
    assert out.final_answer == "391"
    [judge_prompt] = prompts_of(server, "claude-3-5-sonnet-latest")
    assert QUERY in judge_prompt and judge_prompt.count("391") == 3


def test_compact_notation_builds_a_pipeline_that_runs(server):
    server.latency = 0.05
    pipeline = non.build_graph(["3:E:openai:gpt-4o:0.7", "1:J:anthropic:claude-3-5-sonnet:0.0"])
    out = pipeline(inputs={"query": QUERY})
    assert (out.final_answer, out.reasoning) == ("391", "claude-3-5-sonnet-latest judged")
    assert server.stats.max_in_flight == 3
    assert [r.body["temperature"] for r in server.requests if r.model == "gpt-4o"] == [0.7] * 3
    assert QUERY in prompts_of(server, "claude-3-5-sonnet-latest")[0]


def test_nested_notation_runs_sub_networks_at_once_and_verifies(server):
    server.latency = 0.2
    graph = non.build_graph(
        ["$judged", "$judged", "1:J:openai:gpt-4o:0", "1:V:anthropic:claude-3-5-sonnet:0"],
        components={"judged": ["3:E:openai:gpt-4o-mini:0.7", "1:J:openai:gpt-4o-mini:0"]},
    )
    out = graph(query=QUERY)
    assert out.verdict is True and out.revised_answer == "391"
    assert server.stats.max_in_flight == 6  # both sub-networks' ensembles together
    final_judge = [p for p in prompts_of(server, "gpt-4o") if p.startswith("You are a judge")]
    assert len(final_judge) == 1 and QUERY in final_judge[0] and "Candidate 2:\n391" in final_judge[0]
    assert QUERY in prompts_of(server, "claude-3-5-sonnet-latest")[0]


def test_vote_and_filter_vote(server):
    server.responder = lambda request: (
        json.dumps(
            {
                "verdict": "391" in request.last_user_message.split("Candidate answer:")[1],
                "explanation": "",
                "revised_answer": "391",
            }
        )
        if request.last_user_message.startswith("Check whether")
        else ["391", "400", "400", "391", "400"][request.index % 5]
    )
    assert non.Vote("openai:gpt-4o", num_calls=5)(query=QUERY).final_answer == "400"
    server.reset()
    assert non.FilterVote("openai:gpt-4o", num_calls=5)(query=QUERY).final_answer == "391"
    assert server.stats.total == 10  # 5 samples, 5 checks
    reject_all = '{"verdict": false, "explanation": "", "revised_answer": ""}'
    server.responder = lambda request: reject_all if request.last_user_message.startswith("Check") else "7"
    assert non.Filter("openai:gpt-4o")(query=QUERY, responses=["1", "2"]).responses == ["1", "2"]


# -- the seed's composition and Enhanced JIT examples (minus @jit, which the XCS layer adds) --


class EnsembleOperator(Operator[EnsembleInput, EnsembleOutput]):
    lm_modules: list[LMModule]

    def __init__(self, lm_modules):
        self.lm_modules = lm_modules

    def forward(self, *, inputs: EnsembleInput) -> EnsembleOutput:
        responses = [lm(inputs.query) for lm in self.lm_modules]
        return EnsembleOutput(responses=responses)


class MyEnsemble(Operator):
    def forward(self, *, inputs):
        ensemble = non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o")
        responses = ensemble(inputs={"query": inputs.query})
        return responses


def test_seed_composition_and_jit_examples_run(server):
    lms = [LMModule("openai:gpt-4o"), LMModule("anthropic:claude-3-5-sonnet")]
    assert EnsembleOperator(lm_modules=lms)(query=QUERY).responses == ["391", "391"]
    assert MyEnsemble()(inputs={"query": QUERY}).responses == ["391"] * 3
