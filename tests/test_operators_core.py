"""Core operators: model calls through the models layer (a loopback server), and composition."""

import json

import pytest
from helpers import SummarizerInput, SummarizerOutput, SummarizerSpec, replies

from ember.models import ProviderError
from ember.operators import (
    Ensemble,
    JudgeSynthesis,
    LMModule,
    LMOperator,
    MostCommon,
    Operator,
    Parallel,
    Router,
    RoutingError,
    SelectBest,
    Sequential,
    StructuredOutputError,
    Synthesis,
    Verifier,
    majority_vote,
    normalize_answer,
)
from ember.testing import Fault

QUERY = "What is the capital of France?"
CANDIDATES = ["Paris", "Lyon", "paris."]


def user_text(record) -> str:
    return "\n".join(m["content"] for m in record.body["messages"] if m["role"] == "user")


# -- MostCommon -------------------------------------------------------------------------
def test_majority_vote_normalizes_and_breaks_ties_by_first_appearance():
    assert normalize_answer("  The  Answer: PARIS. ") == "the answer: paris"
    assert majority_vote(["Lyon", "Paris", "paris.", " PARIS "]) == "Paris"
    assert majority_vote(["b", "a", "a", "b"]) == "b"  # tie: b appeared first
    assert majority_vote(["", "  ", "x"]) == "x"  # blanks do not vote
    assert majority_vote(["", " "]) == ""
    assert MostCommon()(responses=["4", "four", "4"]).final_answer == "4"


# -- Ensemble ---------------------------------------------------------------------------
def test_ensemble_submits_every_member_with_its_own_sample_index(loopback_models, monkeypatch):
    service = loopback_models.service
    submitted = []
    real_submit = service.submit

    def spy(model_id, prompt, **params):
        submitted.append((model_id, params["sample_index"], params["temperature"]))
        return real_submit(model_id, prompt, **params)

    monkeypatch.setattr(service, "submit", spy)
    members = [
        LMModule("openai:gpt-4o", 0.7),
        LMModule("openai:gpt-4o", 0.7),
        LMModule("anthropic:claude-3-5-sonnet", 0.2),
    ]
    out = Ensemble(members)(query="What is 6 x 7?")
    assert out.responses == ["42", "42", "42"]
    assert submitted == [("openai:gpt-4o", 0, 0.7), ("openai:gpt-4o", 1, 0.7), ("anthropic:claude-3-5-sonnet", 2, 0.2)]
    assert sorted(r.model for r in loopback_models.server.requests) == ["claude-3-5-sonnet-latest", "gpt-4o", "gpt-4o"]


def test_ensemble_failure_is_the_models_layers_typed_error(loopback_models):
    loopback_models.config.update_config("model_registry", {"max_retries": 0})
    loopback_models.server.faults = [Fault.server_error(500, on=[1])]
    with pytest.raises(ProviderError, match="HTTP 500"):
        Ensemble([LMModule("openai:gpt-4o")] * 3)(query="hi")


def test_lm_module_defaults_to_the_app_context_service(loopback_models):
    assert LMModule("openai:gpt-4o").service is loopback_models.service
    assert LMModule("openai:gpt-4o")("What is 2 + 2?") == "4"
    with pytest.raises(ValueError, match="non-empty"):
        LMModule(" ")


# -- structured outputs, with one repair ------------------------------------------------
def test_judge_sees_the_query_and_every_candidate(loopback_models):
    server = loopback_models.server
    server.responder = replies(json.dumps({"reasoning": "Two say Paris.", "final_answer": "Paris"}))
    out = JudgeSynthesis("openai:gpt-4o")(query=QUERY, responses=CANDIDATES)
    assert (out.final_answer, out.reasoning) == ("Paris", "Two say Paris.")
    prompt = user_text(server.requests[0])
    assert QUERY in prompt and all(f"Candidate {i}:\n{c}" in prompt for i, c in enumerate(CANDIDATES, 1))
    assert '"final_answer"' in prompt  # the JSON schema is part of the request
    assert server.requests[0].body["temperature"] == 0.0


def test_one_repair_attempt_fixes_an_invalid_answer(loopback_models):
    server = loopback_models.server
    server.responder = replies("Paris, obviously.", '```json\n{"reasoning": "r", "final_answer": "Paris"}\n```')
    assert JudgeSynthesis("openai:gpt-4o")(query=QUERY, responses=CANDIDATES).final_answer == "Paris"
    assert len(server.requests) == 2
    repair = server.requests[1].body["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"] == "Paris, obviously." and "no JSON object found" in repair[2]["content"]


def test_invalid_structured_output_raises_after_exactly_one_repair(loopback_models):
    server = loopback_models.server
    server.responder = replies('{"final_answer": "Paris"}', '{"final_answer": "Paris", "reasoning": null}')
    with pytest.raises(StructuredOutputError, match="after 2 attempts: reasoning") as info:
        JudgeSynthesis("anthropic:claude-3-5-sonnet")(query=QUERY, responses=CANDIDATES)
    assert info.value.attempts == 2 and info.value.model_id == "anthropic:claude-3-5-sonnet"
    assert len(server.requests) == 2


def test_select_best_returns_a_candidate_verbatim_and_repairs_a_bad_index(loopback_models):
    server = loopback_models.server
    server.responder = replies('{"reasoning": "r", "best_candidate": 7}', '{"reasoning": "r", "best_candidate": 3}')
    out = SelectBest("openai:gpt-4o")(query=QUERY, responses=CANDIDATES)
    assert (out.final_answer, out.index) == ("paris.", 2)
    assert "from 1 to 3" in server.requests[1].body["messages"][2]["content"]


def test_verifier_takes_a_judges_final_answer(loopback_models):
    server = loopback_models.server
    server.responder = replies('{"verdict": false, "explanation": "Lyon is not it.", "revised_answer": "Paris"}')
    out = Verifier("openai:gpt-4o")(query=QUERY, final_answer="Lyon")
    assert (out.verdict, out.revised_answer) == (False, "Paris")
    assert "Candidate answer:\nLyon" in user_text(server.requests[0])


def test_synthesis_returns_free_text(loopback_models):
    loopback_models.server.responder = replies("  Paris  ")
    assert Synthesis("openai:gpt-4o")(query=QUERY, responses=CANDIDATES).final_answer == "Paris"


class Summarizer(LMOperator[SummarizerInput, SummarizerOutput]):
    specification = SummarizerSpec()

    def forward(self, *, inputs: SummarizerInput) -> SummarizerOutput:
        return self.lm.generate(self.specification, inputs)


def test_the_seed_specification_drives_a_model_backed_operator(loopback_models):
    server = loopback_models.server
    server.responder = replies('Here you go: {"summary": "Ember composes LLM calls.", "word_count": "4"}')
    out = Summarizer("anthropic:claude-3-5-sonnet", temperature=0.2)(text="A long text about Ember.", max_words=5)
    assert out == SummarizerOutput(summary="Ember composes LLM calls.", word_count=4)
    [request] = server.requests
    assert request.body["temperature"] == 0.2
    assert request.body["messages"][0]["content"].startswith("Summarize the following text in 5 words or less:")


# -- composition ------------------------------------------------------------------------
class Answer(Operator):
    text: str

    def forward(self, *, inputs):
        return {"final_answer": f"{self.text}:{inputs.query}"}


class Seen(Operator):
    def forward(self, *, inputs):
        return {"seen": sorted(dict(inputs))}


def test_sequential_carries_the_original_inputs_forward():
    out = Sequential([Answer("a"), Seen()])(inputs={"query": "q", "extra": 1})
    assert out == {"seen": ["extra", "final_answer", "query"]}
    assert Sequential([Answer("a"), Answer("b")])(query="q") == {"final_answer": "b:q"}
    with pytest.raises(ValueError, match="non-empty"):
        Sequential([])


def test_parallel_pools_branch_answers_in_order():
    class Many(Operator):
        def forward(self, *, inputs):
            return {"responses": ["x", "y"]}

    out = Parallel([Answer("a"), Many(), Answer("b")])(query="q")
    assert out.responses == ["a:q", "x", "y", "b:q"]


def test_router_runs_only_the_chosen_route():
    router = Router(routes={"a": Answer("a"), "b": Answer("b")}, selector=lambda inputs: inputs.route)
    assert router(query="q", route="b") == {"final_answer": "b:q"}
    with pytest.raises(RoutingError, match="chose 'c'"):
        router(query="q", route="c")
