"""Structured output that negotiates, against the loopback server's ``llama_cpp`` profile.

The profile keeps what llama-cpp-python's OpenAI-compatible server was seen to do: it
refuses ``response_format: {"type": "json_schema"}`` with HTTP 500 and a pydantic
validation body, honours ``json_object`` + ``schema``, and answers one request at a time.
Ember must downgrade once per server and process (one extra request), say so once at INFO,
never retry a deterministic rejection, and still retry a plain 500.
"""

import json
import logging
import types

import pytest
from pydantic import BaseModel

from ember.api import non
from ember.models import MalformedResponseError, ModelNotFoundError, ProviderError
from ember.testing import Fault, LoopbackServer

MODEL = "llama:smollm2-135m-instruct"
QUERY = "What is 17 * 23?"


class Capital(BaseModel):
    country: str
    capital: str


def _context(server, monkeypatch, tmp_path, provider_config=None, max_retries=4):
    from ember._context import get_app_context, reset_app_context
    from ember.config import create_config_manager, set_config_manager

    monkeypatch.chdir(tmp_path)
    manager = create_config_manager()
    provider = {"kind": "openai_compatible", "base_url": server.openai_base_url, **(provider_config or {})}
    manager.update_config(
        "model_registry",
        {"backoff_base": 0.01, "backoff_max": 0.05, "max_retries": max_retries, "providers": {"llama": provider}},
    )
    set_config_manager(manager)
    reset_app_context()
    return manager, get_app_context().model_service


@pytest.fixture
def llama(monkeypatch, tmp_path):
    """A ``llama_cpp``-profile server configured as the ``openai_compatible`` provider ``llama``."""
    from ember._context import reset_app_context
    from ember.config import set_config_manager
    from ember.models._service import forget_negotiations

    forget_negotiations()  # a new server may reuse an earlier test's port, so its URL
    opened = []

    def start(provider_config=None, *, profile="llama_cpp", max_retries=4):
        server = LoopbackServer(profile=profile).start()
        config, service = _context(server, monkeypatch, tmp_path, provider_config, max_retries)
        opened.append((server, service))
        return types.SimpleNamespace(server=server, service=service, config=config)

    yield start
    for server, service in opened:
        service.close()
        server.close()
    set_config_manager(None)
    reset_app_context()


def forms(server):
    """(status, response_format type or None) of every request, in arrival order."""
    return [(r.status, (r.body.get("response_format") or {}).get("type")) for r in server.requests]


def rejected(server):
    return [r for r in server.requests if r.status == 500]


@pytest.mark.parametrize("transport", ["sdk", "lean"])
def test_every_structured_operator_works_with_one_negotiation_request(llama, transport):
    env = llama({"transport": transport})
    server, service = env.server, env.service
    candidates = {"query": QUERY, "responses": ["391", "400"]}

    judged = non.JudgeSynthesis(MODEL)(**candidates)
    synthesized = non.Synthesis(MODEL)(**candidates)
    best = non.SelectBest(MODEL)(**candidates)
    verified = non.Verifier(MODEL)(query=QUERY, candidate_answer="391")
    voted = non.FilterVote(MODEL, num_calls=3)(query=QUERY)

    assert judged.final_answer and synthesized.final_answer
    assert best.final_answer in candidates["responses"]
    assert verified.verdict is True
    assert voted.final_answer == "391"
    # Exactly one extra request for the whole process: the first json_schema, refused with 500.
    [refusal] = rejected(server)
    assert refusal.index == 0 and refusal.body["response_format"]["type"] == "json_schema"
    structured = [f for f in forms(server)[1:] if f[1] is not None]
    assert structured and all(f == (200, "json_object") for f in structured)
    assert all(r.body["response_format"].get("schema") for r in server.requests[1:] if r.body.get("response_format"))
    assert service.stats.retries == 0
    # Operators write their own instructions: the service adds none of its own.
    assert all(m["content"].count("JSON schema") <= 1 for r in server.requests for m in r.body["messages"])
    assert server.stats.max_in_flight == 1  # the profile answers one request at a time


def test_concurrent_first_calls_still_cost_one_extra_request(llama):
    env = llama()
    # Five structured checks fan out at once on a fresh server: one probes, the rest wait for its answer.
    assert non.Filter(MODEL)(query=QUERY, responses=["1", "2", "3", "4", "5"]).responses == ["1", "2", "3", "4", "5"]
    assert len(rejected(env.server)) == 1
    assert env.server.stats.total == 6 and env.service.stats.retries == 0


def test_judge_network_finishes_with_no_retry_storm(llama):
    env = llama()
    network = non.Sequential([non.UniformEnsemble(num_units=3, model_name=MODEL), non.JudgeSynthesis(MODEL)])
    out = network(query=QUERY)
    assert out.final_answer
    assert env.server.stats.total == 5  # 3 answers, 1 refused json_schema, 1 judge in json_object
    assert len(rejected(env.server)) == 1 and env.service.stats.retries == 0
    # A second network pays nothing more: the answer is remembered.
    network(query=QUERY)
    assert env.server.stats.total == 9 and len(rejected(env.server)) == 1


def test_response_format_model_returns_parsed(llama):
    env = llama()
    response = env.service(MODEL, "Capital of France?", response_format=Capital)
    assert isinstance(response.parsed, Capital)
    assert response.attempts == 2  # the refused form, then the answer
    again = env.service(MODEL, "Capital of Italy?", response_format=Capital)
    assert isinstance(again.parsed, Capital) and again.attempts == 1
    assert forms(env.server) == [(500, "json_schema"), (200, "json_object"), (200, "json_object")]


def test_json_schema_parameter_works(llama):
    env = llama()
    schema = Capital.model_json_schema()
    response = env.service(MODEL, "Capital of France?", json_schema=schema)
    assert Capital.model_validate_json(response.text)
    assert env.server.requests[-1].body["response_format"] == {"type": "json_object", "schema": schema}


def test_config_override_sends_json_object_from_the_start(llama):
    env = llama({"structured_output": "json_object"})
    response = env.service(MODEL, "Capital of France?", response_format=Capital)
    assert isinstance(response.parsed, Capital) and response.attempts == 1
    assert forms(env.server) == [(200, "json_object")]
    # JSON mode names no object: the schema goes in the prompt too (once, not twice).
    assert env.server.requests[0].body["messages"][-1]["content"].count("conforms to this JSON schema") == 1


def test_override_none_instructs_through_the_prompt_and_repairs_once(llama):
    env = llama({"structured_output": "none"})
    answers = iter(["Paris, I think.", json.dumps({"country": "France", "capital": "Paris"})])
    env.server.responder = lambda request: next(answers)
    response = env.service(MODEL, "Capital of France?", response_format=Capital)
    assert response.parsed == Capital(country="France", capital="Paris")
    first, repair = env.server.requests
    assert "response_format" not in first.body and "response_format" not in repair.body
    assert "JSON schema" in first.body["messages"][-1]["content"]
    assert [m["role"] for m in repair.body["messages"]] == ["user", "assistant", "user"]
    # A second invalid answer is an error, after exactly one repair.
    env.server.responder = lambda request: "no JSON here"
    with pytest.raises(MalformedResponseError, match="Capital"):
        env.service(MODEL, "Capital of Spain?", response_format=Capital)
    assert env.server.stats.total == 4


def test_a_400_naming_response_format_also_downgrades(llama):
    env = llama(profile=None)
    env.server.faults = [Fault.client_error(400, "response_format type 'json_schema' is not supported", on=[0])]
    response = env.service(MODEL, "Capital of France?", response_format=Capital)
    assert isinstance(response.parsed, Capital)
    assert forms(env.server) == [(400, "json_schema"), (200, "json_object")]


def test_negotiation_is_logged_once_at_info(llama, caplog):
    env = llama()
    with caplog.at_level(logging.INFO, logger="ember.models"):
        for question in ("France?", "Italy?", "Spain?"):
            env.service(MODEL, question, response_format=Capital)
    lines = [r for r in caplog.records if "rejected structured output" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "'json_schema'" in lines[0].getMessage() and "'json_object'" in lines[0].getMessage()


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_never_retried(llama, status):
    env = llama(profile=None)
    env.server.faults = [Fault.client_error(status, "bad request")]
    with pytest.raises(ModelNotFoundError if status == 404 else ProviderError):
        env.service(MODEL, "hi")
    assert env.server.stats.total == 1 and env.service.stats.retries == 0


@pytest.mark.parametrize("transport", ["sdk", "lean"])
def test_a_500_with_a_validation_body_is_not_retried_but_a_plain_500_is(llama, monkeypatch, transport):
    from ember.models.providers.openai import OpenAICompatibleProvider

    # Nothing to step down to: the server's validation refusal is the error, at once.
    monkeypatch.setattr(OpenAICompatibleProvider, "structured_output_forms", ("json_schema",))
    env = llama({"transport": transport}, max_retries=2)
    with pytest.raises(ProviderError, match="Input should be") as err:
        env.service(MODEL, "Capital of France?", response_format=Capital)
    assert err.value.status_code == 500 and not err.value.retryable
    assert env.server.stats.total == 1 and env.service.stats.retries == 0
    env.server.faults = [Fault.server_error(500)]
    with pytest.raises(ProviderError, match="after 3 attempts"):
        env.service(MODEL, "hi")
    assert env.server.stats.total == 4 and env.service.stats.retries == 2


def test_a_rejection_that_does_not_name_the_form_is_raised_not_downgraded(llama):
    env = llama(profile=None)
    env.server.faults = [Fault.client_error(400, "messages: too many messages", on=[0])]
    with pytest.raises(ProviderError, match="too many messages"):
        env.service(MODEL, "Capital of France?", response_format=Capital)
    assert forms(env.server) == [(400, "json_schema")]
    env.service(MODEL, "Capital of France?", response_format=Capital)  # still json_schema: nothing was learnt
    assert forms(env.server)[-1] == (200, "json_schema")


def test_the_profile_speaks_like_llama_cpp_python():
    import urllib.error
    import urllib.request

    with pytest.raises(ValueError, match="unknown profile"):
        LoopbackServer(profile="vllm")
    with LoopbackServer(profile="llama_cpp") as server:
        schema = Capital.model_json_schema()

        def post(response_format):
            body = {"model": "m", "messages": [{"role": "user", "content": "Capital?"}],
                    "response_format": response_format}
            request = urllib.request.Request(server.openai_base_url + "/chat/completions", json.dumps(body).encode(),
                                             {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        status, body = post({"type": "json_schema", "json_schema": {"name": "Capital", "schema": schema}})
        assert status == 500 and "Input should be 'text' or 'json_object'" in body["error"]["message"]
        assert "'loc': ('body', 'response_format', 'type')" in body["error"]["message"]
        status, body = post({"type": "json_object", "schema": schema})
        assert status == 200 and Capital.model_validate_json(body["choices"][0]["message"]["content"])
        assert post({"type": "text"})[0] == 200


# -- streams join the negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sdk", "lean"])
def test_a_structured_stream_negotiates_once_and_returns_parsed(llama, transport):
    env = llama({"transport": transport})
    server, service = env.server, env.service
    assert service._route(MODEL).adapter._lean == (transport == "lean")
    *deltas, response = list(service.stream(MODEL, "Capital of France?", response_format=Capital))
    assert deltas and "".join(deltas) == response.text
    assert isinstance(response.parsed, Capital)
    assert response.attempts == 2  # the refused form, then the streamed answer
    assert forms(server) == [(500, "json_schema"), (200, "json_object")]
    assert all(r.stream for r in server.requests)
    assert server.requests[1].body["response_format"]["schema"] == Capital.model_json_schema()
    # The same memo as the plain path: later streams and calls go out as json_object at once.
    *_, again = list(service.stream(MODEL, "Capital of Italy?", response_format=Capital))
    plain = service(MODEL, "Capital of Spain?", response_format=Capital)
    assert isinstance(again.parsed, Capital) and again.attempts == 1 and plain.attempts == 1
    assert forms(server)[2:] == [(200, "json_object"), (200, "json_object")]
    assert service.stats.retries == 0 and len(rejected(server)) == 1


def test_a_stream_uses_what_a_plain_call_learnt(llama):
    env = llama()
    assert env.service(MODEL, "Capital of France?", response_format=Capital).attempts == 2
    *_, response = list(env.service.stream(MODEL, "Capital of Italy?", response_format=Capital))
    assert isinstance(response.parsed, Capital) and response.attempts == 1
    assert forms(env.server)[-1] == (200, "json_object") and len(rejected(env.server)) == 1


def test_concurrent_structured_streams_cost_one_extra_request(llama):
    import asyncio

    env = llama()

    async def one(country):
        return [item async for item in env.service.astream(MODEL, f"Capital of {country}?", response_format=Capital)]

    async def main():
        return await asyncio.gather(*(one(c) for c in ("France", "Italy", "Spain", "Peru")))

    for *deltas, response in asyncio.run(main()):
        assert isinstance(response.parsed, Capital) and "".join(deltas) == response.text
    assert len(rejected(env.server)) == 1 and env.server.stats.total == 5


def test_a_stream_never_downgrades_on_a_plain_500(llama):
    env = llama({"structured_output": "json_schema"}, max_retries=0)
    env.server.faults = [Fault.server_error(500, on=[0])]
    with pytest.raises(ProviderError):
        list(env.service.stream(MODEL, "Capital of France?", response_format=Capital))
    assert forms(env.server) == [(500, "json_schema")]
    *_, response = list(env.service.stream(MODEL, "Capital of France?", response_format=Capital))
    assert isinstance(response.parsed, Capital)
    assert [f[1] for f in forms(env.server)] == ["json_schema", "json_schema", "json_object"]


# -- a structured stream is validated, and repaired once, like a plain call --------------------------------

COUNTRY = json.dumps({"country": "France", "capital": "Paris"})


def _scripted(server, *answers):
    """Answer each request with the next of ``answers``."""
    script = iter(answers)
    server.responder = lambda request: next(script)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stream_whose_answer_fails_validation_is_repaired_once(llama, mode):
    import asyncio

    env = llama({"structured_output": "none"})
    _scripted(env.server, "Paris, I think.", COUNTRY)
    if mode == "sync":
        items = list(env.service.stream(MODEL, "Capital of France?", response_format=Capital))
    else:
        async def collect():
            return [item async for item in env.service.astream(MODEL, "Capital of France?", response_format=Capital)]

        items = asyncio.run(collect())
    *deltas, response = items
    # The deltas were the rejected answer (they cannot be taken back); the response is the repaired one.
    assert "".join(deltas) == "Paris, I think." and response.repaired
    assert response.text == COUNTRY and response.parsed == Capital(country="France", capital="Paris")
    first, repair = env.server.requests
    assert first.stream and not repair.stream  # one repair request, not streamed
    assert [m["role"] for m in repair.body["messages"]] == ["user", "assistant", "user"]
    assert repair.body["messages"][1]["content"] == "Paris, I think."
    assert response.attempts == 2
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        first.input_tokens + repair.input_tokens, first.output_tokens + repair.output_tokens)
    assert env.service.stats.succeeded == 1 and env.service.stats.failed == 0


def test_a_valid_stream_is_not_repaired_and_its_deltas_are_the_text(llama):
    env = llama({"structured_output": "none"})
    _scripted(env.server, COUNTRY)
    *deltas, response = list(env.service.stream(MODEL, "Capital of France?", response_format=Capital))
    assert "".join(deltas) == response.text == COUNTRY and not response.repaired
    assert env.server.stats.total == 1


def test_a_stream_whose_repair_also_fails_raises_after_exactly_one_repair(llama):
    env = llama()  # the negotiated form (json_object) is below json_schema too
    _scripted(env.server, "no JSON here", "still none")
    with pytest.raises(MalformedResponseError, match="Capital"):
        list(env.service.stream(MODEL, "Capital of France?", response_format=Capital))
    assert forms(env.server) == [(500, "json_schema"), (200, "json_object"), (200, "json_object")]
    assert env.service.stats.failed == 1


def test_a_stream_constrained_by_json_schema_is_not_repaired(llama):
    env = llama(profile=None)  # a server that takes json_schema: it constrained the answer itself
    _scripted(env.server, "no JSON here")
    with pytest.raises(MalformedResponseError):
        list(env.service.stream(MODEL, "Capital of France?", response_format=Capital))
    assert forms(env.server) == [(200, "json_schema")]


def test_a_repaired_answer_replaces_the_first_in_the_cache(llama, tmp_path):
    env = llama({"structured_output": "none"})
    env.config.update_config("app", {"cache": {"enabled": True, "directory": str(tmp_path / "cache")}})
    _scripted(env.server, "Paris, I think.", COUNTRY)
    assert env.service(MODEL, "Capital of France?", response_format=Capital).repaired
    *deltas, replay = list(env.service.stream(MODEL, "Capital of France?", response_format=Capital))
    assert replay.cached and not replay.repaired and deltas == [COUNTRY]
    assert env.server.stats.total == 2  # the replay is free, and needs no repair
