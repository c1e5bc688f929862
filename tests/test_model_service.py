"""ModelService through the real SDKs against the loopback server: the call path end to end."""

import asyncio
import json
import logging
import threading

import pytest
from pydantic import BaseModel

from ember.models import (
    ContextLengthExceededError,
    MalformedResponseError,
    MissingCredentialsError,
    ModelService,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    ResponseCache,
)
from ember.testing import Fault, count_tokens


def test_seed_model_registry_example_runs_as_written(loopback_models):
    from ember.api.models import ModelInfo, ModelRegistry, ModelService

    registry = ModelRegistry()
    registry.register_model(ModelInfo(id="openai:gpt-4o"))
    service = ModelService(registry=registry)
    response = service.invoke_model("openai:gpt-4o", "Hello world")
    assert "Hello world" in response.text

    from ember import initialize_ember

    service = initialize_ember()
    response = service("anthropic:claude-3-sonnet", "Hello Claude")
    assert "Hello Claude" in response.text
    sent = loopback_models.server.requests
    assert [r.path for r in sent] == ["/v1/chat/completions", "/v1/messages"]
    assert sent[1].model == "claude-3-sonnet-20240229"  # the catalogue's API name


def test_convenience_models_callable(loopback_models):
    from ember.api import models

    response = models("openai:gpt-4o", "What is 17 + 25?", temperature=0)
    assert response.text == "42" and str(response) == "42"
    assert response.model_id == "openai:gpt-4o" and response.latency_s > 0


def test_messages_system_and_parameters_reach_the_wire(loopback_models):
    service = loopback_models.service
    service.invoke_model(
        "anthropic:claude-3-5-sonnet",
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "q"}],
        system="Be brief",
        temperature=0.3,
        max_tokens=7,
        stop=["END"],
    )
    body = loopback_models.server.requests[0].body
    assert body["system"] == "Be brief" and body["max_tokens"] == 7 and body["temperature"] == 0.3
    assert body["stop_sequences"] == ["END"] and [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    service.invoke_model("openai:gpt-4o", "q", seed=5, stop="X", top_p=0.5)
    body = loopback_models.server.requests[1].body
    assert body["seed"] == 5 and body["stop"] == ["X"] and body["top_p"] == 0.5


def test_usage_and_cost_are_exact_for_priced_models(loopback_models):
    service = loopback_models.service
    prompt = "Tell me something about caching please"
    response = service.invoke_model("openai:gpt-4o", prompt)
    expected_in, expected_out = count_tokens(prompt), count_tokens(response.text)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (expected_in, expected_out)
    assert response.usage.cost_usd == pytest.approx((expected_in * 2.5 + expected_out * 10.0) / 1e6, rel=1e-12)
    usage = service.usage_service.get_usage("openai:gpt-4o")
    assert usage.calls == 1 and usage.cost_usd == response.usage.cost_usd


def test_unpriced_model_reports_unknown_cost(loopback_models):
    service = loopback_models.service
    response = service.invoke_model("openai:not-in-catalogue", "hello there")
    assert response.usage.cost_usd is None and response.usage.input_tokens == 2
    assert service.usage_service.get_usage("openai:not-in-catalogue").cost_usd is None
    assert service.usage_service.total().cost_usd is None


@pytest.mark.parametrize(
    "fault",
    [Fault.rate_limit(retry_after=0.05, on=[0]), Fault.server_error(503, on=[0]), Fault.drop(on=[0])],
    ids=["429", "5xx", "dropped"],
)
def test_transient_failure_then_success(loopback_models, fault):
    loopback_models.server.faults = [fault]
    response = loopback_models.service.invoke_model("openai:gpt-4o", "What is 2 + 2?")
    assert response.text == "4" and response.attempts == 2
    assert loopback_models.server.stats.total == 2


def test_timeout_then_success(loopback_models):
    loopback_models.server.faults = [Fault.slow(delay=5.0, on=[0])]
    response = loopback_models.service.invoke_model("anthropic:claude-3-5-haiku", "What is 3 * 3?", timeout=0.3)
    assert response.text == "9" and response.attempts == 2


def test_exhausted_retries_raise_typed_errors(loopback_models):
    loopback_models.config.update_config("model_registry", {"max_retries": 2})
    loopback_models.server.faults = [Fault.rate_limit(retry_after=0.01)]
    with pytest.raises(RateLimitError) as err:
        loopback_models.service.invoke_model("openai:gpt-4o", "hi")
    assert err.value.attempts == 3 and err.value.status_code == 429
    assert loopback_models.server.stats.total == 3

    loopback_models.server.faults = [Fault.server_error(500)]
    with pytest.raises(ProviderError) as err:
        loopback_models.service.invoke_model("anthropic:claude-3-5-haiku", "hi")
    assert err.value.status_code == 500 and err.value.attempts == 3

    loopback_models.server.faults = [Fault.slow(delay=5.0)]
    with pytest.raises(ProviderTimeoutError):
        loopback_models.service.invoke_model("openai:gpt-4o", "hi", timeout=0.1)


def test_retry_after_is_honoured(loopback_models):
    loopback_models.server.faults = [Fault.rate_limit(retry_after=0.4, on=[0, 1])]
    loopback_models.service.invoke_model("openai:gpt-4o", "hi")
    arrivals = [r.arrived for r in loopback_models.server.requests]
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] >= 0.4 and arrivals[2] - arrivals[1] >= 0.4


def test_non_retryable_errors_are_typed_and_immediate(loopback_models):
    server, service = loopback_models.server, loopback_models.service
    server.faults = [Fault.context_length()]
    with pytest.raises(ContextLengthExceededError):
        service.invoke_model("openai:gpt-4o", "long")
    with pytest.raises(ContextLengthExceededError):
        service.invoke_model("anthropic:claude-3-5-haiku", "long")
    assert server.stats.total == 2
    server.faults = [Fault.malformed()]
    with pytest.raises(MalformedResponseError) as err:
        service.invoke_model("openai:gpt-4o", "hi")
    assert err.value.snippet  # a truncated piece of what came back


def test_concurrency_limit_is_one_budget_across_threads_and_nesting(loopback_models):
    server, service = loopback_models.server, loopback_models.service
    loopback_models.config.update_config("model_registry", {"providers": {"openai": {"max_concurrency": 4}}})
    server.latency = 0.05

    def caller():  # each thread fans out 5 calls at once, like a nested ensemble
        futures = [service.submit("openai:gpt-4o", f"q{i}", sample_index=i) for i in range(5)]
        return [f.result().text for f in futures]

    results = []
    threads = [threading.Thread(target=lambda: results.append(caller())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and server.stats.total == 30
    assert server.stats.max_in_flight == 4


def test_async_twin_runs_concurrently_from_the_users_loop(loopback_models):
    server, service = loopback_models.server, loopback_models.service
    server.latency = 0.1

    async def main():
        return await asyncio.gather(*(service.ainvoke_model("openai:gpt-4o", f"What is {i} + 1?") for i in range(20)))

    responses = asyncio.run(main())
    assert [r.text for r in responses] == [str(i + 1) for i in range(20)]
    assert server.stats.max_in_flight == 20


def test_rpm_limit_holds(loopback_models):
    server, service = loopback_models.server, loopback_models.service
    service.invoke_model("openai:gpt-4o", "warm up the client and its connection")
    server.reset()
    rpm = 240  # 4 per second, bucket capacity one second's worth
    loopback_models.config.update_config("model_registry", {"providers": {"openai": {"rpm": rpm}}})
    futures = [service.submit("openai:gpt-4o", f"q{i}") for i in range(12)]
    for f in futures:
        f.result()
    arrivals = sorted(r.arrived for r in server.requests)
    assert len(arrivals) == 12
    rate, capacity = rpm / 60, 4
    for i in range(len(arrivals)):
        for j in range(i, len(arrivals)):
            # j - i + 1 requests started within arrivals[j] - arrivals[i] seconds; one extra
            # for the client-to-server transit that can compress a gap.
            assert j - i + 1 <= capacity + rate * (arrivals[j] - arrivals[i]) + 1


def test_tpm_limit_delays_large_requests(loopback_models):
    server, service = loopback_models.server, loopback_models.service
    tpm = 12000  # 200 tokens per second, bucket capacity 200
    loopback_models.config.update_config("model_registry", {"providers": {"openai": {"tpm": tpm}}})
    responses = [service.invoke_model("openai:gpt-4o", "word " * 150, max_tokens=5) for _ in range(3)]
    used = [r.usage.total_tokens for r in responses]
    assert used[0] >= 150
    arrivals = [r.arrived for r in server.requests]
    # The first two requests' real tokens had to fit capacity + rate * (gap before the third).
    assert arrivals[2] - arrivals[0] >= (used[0] + used[1] - tpm / 60) / (tpm / 60) - 0.02


def test_missing_credentials_names_variable_and_config_key(loopback_models, monkeypatch):
    from ember.config import create_config_manager

    monkeypatch.delenv("OPENAI_API_KEY")
    service = ModelService(config_manager=create_config_manager())
    with pytest.raises(MissingCredentialsError) as err:
        service.invoke_model("openai:gpt-4o", "hi")
    assert "OPENAI_API_KEY" in str(err.value) and "model_registry.providers.openai.api_key" in str(err.value)


def test_openai_compatible_provider_by_name(loopback_models, monkeypatch):
    monkeypatch.setenv("MYVLLM_KEY", "sk-compat-secret-000000000000")
    loopback_models.config.update_config(
        "model_registry",
        {"providers": {"myvllm": {"kind": "openai_compatible", "base_url": loopback_models.server.openai_base_url,
                                  "api_key_env": "MYVLLM_KEY"}}},
    )
    response = loopback_models.service.invoke_model("myvllm:llama-3-8b", "What is 6 x 7?", max_tokens=5)
    assert response.text == "42" and response.usage.cost_usd is None
    record = loopback_models.server.requests[0]
    assert record.model == "llama-3-8b" and record.body["max_tokens"] == 5 and record.has_api_key


class Capital(BaseModel):
    country: str
    capital: str


def test_structured_output_is_parsed_and_validated(loopback_models):
    server, service = loopback_models.server, loopback_models.service
    server.responder = lambda req: json.dumps({"country": "France", "capital": "Paris"})
    for model_id in ("openai:gpt-4o", "anthropic:claude-3-5-haiku"):
        response = service.invoke_model(model_id, "Capital of France?", response_format=Capital)
        assert response.parsed == Capital(country="France", capital="Paris")
    assert server.requests[0].body["response_format"]["type"] == "json_schema"
    assert server.requests[1].body["output_config"]["format"]["type"] == "json_schema"
    server.responder = lambda req: '{"country": "France"}'
    with pytest.raises(MalformedResponseError, match="Capital"):
        service.invoke_model("openai:gpt-4o", "Capital of France?", response_format=Capital)


def test_cache_hits_misses_sample_indexes_and_switch(loopback_models, tmp_path):
    server = loopback_models.server
    cache = ResponseCache(tmp_path / "cache")
    service = ModelService(config_manager=loopback_models.config, cache=cache)
    first = service.invoke_model("openai:gpt-4o", "hi", temperature=0.7, sample_index=0)
    again = service.invoke_model("openai:gpt-4o", "hi", temperature=0.7, sample_index=0)
    other = service.invoke_model("openai:gpt-4o", "hi", temperature=0.7, sample_index=1)
    assert not first.cached and again.cached and not other.cached
    assert again.text == first.text and again.usage.cost_usd == 0.0
    assert server.stats.total == 2 and (cache.hits, cache.misses) == (1, 2) and len(cache) == 2
    service.invoke_model("openai:gpt-4o", "hi", temperature=0.2, sample_index=0)  # a parameter changes the key
    assert server.stats.total == 3
    assert service.usage_service.get_usage("openai:gpt-4o").calls == 3  # hits are not billed
    service.close()

    off = ModelService(config_manager=loopback_models.config, cache=False)
    off.invoke_model("openai:gpt-4o", "hi", temperature=0.7, sample_index=0)
    assert server.stats.total == 4


def test_cache_switch_and_directory_from_config(loopback_models, tmp_path):
    directory = tmp_path / "from-config"
    loopback_models.config.update_config("app", {"cache": {"enabled": True, "directory": str(directory)}})
    service = loopback_models.service
    service.invoke_model("openai:gpt-4o", "hi")
    assert service.invoke_model("openai:gpt-4o", "hi").cached
    assert (directory / ResponseCache.FILENAME).exists()
    loopback_models.config.update_config("app", {"cache": {"enabled": False}})
    assert not service.invoke_model("openai:gpt-4o", "hi").cached


def test_planted_key_never_appears_anywhere(loopback_models, caplog, tmp_path):
    key, server, service = loopback_models.key, loopback_models.server, loopback_models.service
    caplog.set_level(logging.DEBUG)
    cache = ResponseCache(tmp_path / "c")
    cached_service = ModelService(config_manager=loopback_models.config, cache=cache)
    cached_service.invoke_model("openai:gpt-4o", f"echo the key {key}")
    server.faults = [Fault.server_error(500)]
    loopback_models.config.update_config("model_registry", {"max_retries": 0})
    errors = []
    for model_id in ("openai:gpt-4o", "anthropic:claude-3-5-haiku"):
        with pytest.raises(ProviderError) as err:
            service.invoke_model(model_id, "hi")
        errors.append(err.value)
    route = service._route("openai:gpt-4o")
    texts = [
        caplog.text,
        *map(str, errors),
        *map(repr, errors),
        repr(service),
        repr(route),
        repr(route.adapter.settings),
        repr(loopback_models.config.get_config("model_registry")),
        str(loopback_models.config.get_config()),
        repr([r for r in server.requests if r.path != "/v1/chat/completions"]),
        (tmp_path / "c" / ResponseCache.FILENAME).read_bytes().decode("utf-8", "replace"),
    ]
    for text in texts:
        assert key not in text
    cached_service.close()


def _max_in_flight(records) -> int:
    events = sorted([(r.arrived, 1) for r in records] + [(r.finished, -1) for r in records], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_provider_limits_are_one_budget_shared_by_its_model_ids(loopback_models):
    server, service, config = loopback_models.server, loopback_models.service, loopback_models.config
    config.update_config("model_registry", {"providers": {"openai": {"max_concurrency": 5}}})
    server.latency = 0.2
    futures = [service.submit(model_id, f"q{i}", sample_index=i)
               for i in range(10) for model_id in ("openai:gpt-4o", "openai:gpt-4o-mini")]
    for future in futures:
        future.result()
    assert server.stats.total == 20 and server.stats.max_in_flight == 5

    # A model's own limit applies within its provider's budget.
    config.update_config("model_registry", {"models": {"openai:gpt-4o": {"rate_limit": {"max_concurrency": 2}}}})
    server.reset()
    limited = ModelService(config_manager=config)  # its registry reads the new entry
    futures = [limited.submit(model_id, f"r{i}", sample_index=i)
               for i in range(10) for model_id in ("openai:gpt-4o", "openai:gpt-4o-mini")]
    for future in futures:
        future.result()
    limited.close()
    records = server.requests
    assert server.stats.max_in_flight == 5
    assert _max_in_flight([r for r in records if r.model == "gpt-4o"]) == 2
    assert _max_in_flight([r for r in records if r.model == "gpt-4o-mini"]) >= 3


def test_a_provider_budget_above_the_default_is_not_capped_by_it(loopback_models):
    server, service, config = loopback_models.server, loopback_models.service, loopback_models.config
    config.update_config("model_registry", {"default_max_concurrency": 4, "providers": {"openai": {"max_concurrency": 12}}})
    server.latency = 0.2
    futures = [service.submit("openai:gpt-4o", f"q{i}", sample_index=i) for i in range(24)]
    for future in futures:
        future.result()
    assert server.stats.max_in_flight == 12


def test_adapter_exceptions_become_typed_non_retryable_errors(loopback_models):
    from ember.models import Provider, register_provider

    calls = []

    @register_provider
    class Faulty(Provider):  # a user's adapter whose SDK raises its own exceptions
        name = "faulty_for_test"
        requires_key = False

        async def acomplete(self, request):
            calls.append(request)
            if len(calls) == 1:
                "\ud800".encode()  # UnicodeEncodeError, as an SDK raises deep inside for unsendable text
            raise TypeError("create() got an unexpected keyword argument 'foo'")

    for expected in ("UnicodeEncodeError", "TypeError"):
        with pytest.raises(ProviderError, match=expected) as err:
            loopback_models.service("faulty_for_test:m", "hi")
        assert not err.value.retryable and err.value.attempts == 1
    assert len(calls) == 2  # neither was retried
    assert loopback_models.service.stats.failed == 2


def test_corrupt_cache_file_is_bypassed_with_a_warning(loopback_models, tmp_path, caplog):
    server, service = loopback_models.server, loopback_models.service
    directory = tmp_path / "cache"
    directory.mkdir()
    path = directory / ResponseCache.FILENAME
    path.write_bytes(b"not a database, whatever it once was " * 200)
    loopback_models.config.update_config("app", {"cache": {"enabled": True, "directory": str(directory)}})
    with caplog.at_level(logging.WARNING, logger="ember"):
        first = service.invoke_model("openai:gpt-4o", "hi")
        second = service.invoke_model("openai:gpt-4o", "hi")
    assert first.text == second.text and not first.cached and not second.cached
    assert server.stats.total == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "bypassed" in warnings[0]

    cache = ResponseCache(directory)  # direct use: no exception either
    assert cache.get("k") is None and len(cache) == 0 and cache.broken
    cache.close()
