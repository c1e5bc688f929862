"""Streaming through ModelService and ``models.stream``: openai, anthropic and openai_compatible
against the loopback server's SSE, and the local model token by token from its decode loop."""

import asyncio
import time

import pytest

from ember.models import (
    ContextLengthExceededError,
    InvalidRequestError,
    MalformedResponseError,
    ModelResponse,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
    StreamInterruptedError,
)
from ember.testing import Fault

PROMPT = "Tell me about the weather on the coast today"
REMOTE = ("openai:gpt-4o", "anthropic:claude-3-5-haiku", "compat:llama-3-8b")


@pytest.fixture(params=["sdk", "lean"])
def remote(request, loopback_models):
    """The loopback fixture plus ``compat``, an ``openai_compatible`` provider on the same server;
    all three providers on one transport (``sdk``: the official SDKs; ``lean``: SSE over Ember's own HTTP client)."""
    transport = request.param
    loopback_models.config.update_config(
        "model_registry",
        {"providers": {
            "compat": {"kind": "openai_compatible", "base_url": loopback_models.server.openai_base_url,
                       "transport": transport},
            "openai": {"transport": transport},
            "anthropic": {"transport": transport},
        }},
    )
    loopback_models.transport = transport
    return loopback_models


def on_transport(remote, model_id):
    """The adapter ``model_id`` routes to, checked to be on the fixture's transport."""
    adapter = remote.service._route(model_id).adapter
    assert adapter._lean == (remote.transport == "lean")
    return adapter


def split(items):
    *deltas, last = items
    assert all(isinstance(d, str) and d for d in deltas)
    assert isinstance(last, ModelResponse)
    return deltas, last


def wait_until(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("model_id", REMOTE)
def test_deltas_concatenate_and_usage_is_exact(remote, model_id):
    server, service = remote.server, remote.service
    on_transport(remote, model_id)
    stream = service.stream(model_id, PROMPT, max_tokens=50)
    deltas, response = split(list(stream))
    assert len(deltas) > 3 and "".join(deltas) == response.text and stream.response is response
    assert server.requests[-1].stream
    plain = service.invoke_model(model_id, PROMPT, max_tokens=50)
    assert response.text == plain.text and response.usage == plain.usage  # tokens and cost
    record = server.requests[-2]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (record.input_tokens, record.output_tokens)
    assert response.finish_reason == plain.finish_reason and response.attempts == 1 and not response.cached
    if model_id.startswith("compat:"):
        assert response.usage.cost_usd is None
    else:
        assert response.usage.cost_usd > 0


@pytest.mark.parametrize("model_id", REMOTE)
def test_async_twin(remote, model_id):
    from ember.api import models

    async def main():
        items = [item async for item in models.astream(model_id, PROMPT)]
        return items

    deltas, response = split(asyncio.run(main()))
    assert "".join(deltas) == response.text and response.usage.output_tokens > 0


def test_models_stream_sync(remote):
    from ember.api import models

    deltas, response = split(list(models.stream("openai:gpt-4o", PROMPT)))
    assert "".join(deltas) == response.text


@pytest.mark.parametrize("model_id", REMOTE)
def test_breaking_out_early_closes_the_connection(remote, model_id):
    server, service = remote.server, remote.service
    on_transport(remote, model_id)
    server.stream_interval = 0.05
    with service.stream(model_id, PROMPT) as stream:
        for _ in stream:
            break
    wait_until(lambda: server.requests[-1].client_closed)
    assert service.stats.in_flight == 0


def test_async_early_exit_closes_the_connection(remote):
    server, service = remote.server, remote.service
    server.stream_interval = 0.05

    async def main():
        stream = service.astream("anthropic:claude-3-5-haiku", PROMPT)
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(main())
    wait_until(lambda: server.requests[-1].client_closed)


@pytest.mark.parametrize("model_id", REMOTE)
def test_failures_before_the_first_delta_are_retried(remote, model_id):
    server, service = remote.server, remote.service
    server.faults = [Fault.rate_limit(retry_after=0.01, on=[0]), Fault.server_error(500, on=[1])]
    deltas, response = split(list(service.stream(model_id, PROMPT)))
    assert response.attempts == 3 and "".join(deltas) == response.text
    assert [r.status for r in server.requests] == [429, 500, 200]


@pytest.mark.parametrize("model_id", REMOTE)
def test_cut_before_the_first_delta_is_retried(remote, model_id):
    server, service = remote.server, remote.service
    server.faults = [Fault.stream_cut(after=1, on=[0])]  # only the role chunk / message_start
    deltas, response = split(list(service.stream(model_id, PROMPT)))
    assert response.attempts == 2 and "".join(deltas) == response.text


def test_retries_give_up_with_a_typed_error(remote):
    remote.config.update_config("model_registry", {"max_retries": 1})
    remote.server.faults = [Fault.rate_limit(retry_after=0.01)]
    with pytest.raises(RateLimitError, match="gave up after 2 attempts"):
        list(remote.service.stream("openai:gpt-4o", PROMPT))


@pytest.mark.parametrize(("model_id", "after"), [
    ("openai:gpt-4o", 3), ("anthropic:claude-3-5-haiku", 5), ("compat:llama-3-8b", 3)])
def test_failure_after_the_first_delta_is_typed_and_not_retried(remote, model_id, after):
    server, service = remote.server, remote.service
    server.faults = [Fault.stream_cut(after=after)]
    seen = []
    with pytest.raises(StreamInterruptedError) as err:
        for item in service.stream(model_id, PROMPT):
            seen.append(item)
    assert seen and err.value.partial_text == "".join(seen)
    assert isinstance(err.value, ProviderError) and not err.value.retryable
    assert len(server.requests) == 1
    assert isinstance(err.value.__cause__, ProviderConnectionError)  # the cut, typed, as its cause


@pytest.mark.parametrize("model_id", REMOTE)
def test_a_malformed_stream_is_a_typed_error_not_retried(remote, model_id):
    remote.server.faults = [Fault.malformed(on=[0])]
    with pytest.raises(MalformedResponseError):
        list(remote.service.stream(model_id, PROMPT))
    assert len(remote.server.requests) == 1


@pytest.mark.parametrize("model_id", REMOTE)
def test_an_error_status_is_mapped_before_the_first_delta(remote, model_id):
    remote.server.faults = [Fault.context_length(on=[0])]
    with pytest.raises(ContextLengthExceededError):
        list(remote.service.stream(model_id, PROMPT))
    assert len(remote.server.requests) == 1


_NO_SDK = """
import os
import sys
from ember.testing import LoopbackServer
from ember.config import create_config_manager, set_config_manager
from ember._context import get_app_context
with LoopbackServer() as server:
    os.environ.update(server.environ())
    manager = create_config_manager()
    manager.update_config("model_registry", {"providers": {
        "openai": {"transport": "lean"},
        "anthropic": {"transport": "lean"},
        "compat": {"kind": "openai_compatible", "base_url": server.openai_base_url},
    }})
    set_config_manager(manager)
    service = get_app_context().model_service
    for model_id in ("openai:gpt-4o", "anthropic:claude-3-5-haiku", "compat:llama-3-8b"):
        *deltas, response = list(service.stream(model_id, "Tell me about the weather"))
        assert deltas and "".join(deltas) == response.text and response.usage.output_tokens > 0, model_id
    service.close()
    assert all(r.stream for r in server.requests)
loaded = sorted(m for m in ("openai", "anthropic") if m in sys.modules)
assert not loaded, loaded
print("no sdk")
"""


def test_a_lean_stream_never_imports_the_sdks(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _NO_SDK], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "no sdk" in done.stdout, done.stderr[-3000:]


def test_extra_stream_on_the_plain_path_points_at_stream(remote):
    with pytest.raises(InvalidRequestError, match=r"service.stream") as err:
        remote.service.invoke_model("openai:gpt-4o", "hi", extra={"stream": True})
    assert err.value.parameter == "extra['stream']"
    assert not remote.server.requests


def test_bad_parameters_raise_at_once(remote):
    with pytest.raises(InvalidRequestError):
        remote.service.stream("openai:gpt-4o", "hi", temperature=7)


def test_cached_answers_replay_as_one_delta(remote, tmp_path):
    from ember.models import ModelService, ResponseCache

    service = ModelService(config_manager=remote.config, cache=ResponseCache(str(tmp_path / "cache")))
    try:
        first = split(list(service.stream("openai:gpt-4o", PROMPT, temperature=0)))[1]
        deltas, again = split(list(service.stream("openai:gpt-4o", PROMPT, temperature=0)))
        assert again.cached and deltas == [first.text] and again.text == first.text
        assert len(remote.server.requests) == 1
    finally:
        service.close()


def test_the_concurrency_slot_is_held_for_the_whole_stream(remote):
    remote.config.update_config("model_registry", {"providers": {"openai": {"max_concurrency": 1}}})
    server, service = remote.server, remote.service
    server.stream_interval = 0.02
    first = service.stream("openai:gpt-4o", PROMPT)
    next(first)
    second = service.stream("openai:gpt-4o", PROMPT)
    time.sleep(0.2)
    assert len(server.requests) == 1  # the second waits for the first's slot
    split(list(first))
    split(list(second))
    assert len(server.requests) == 2


# -- local: token by token from the JAX decode loop -------------------------------------------

LOCAL = "local:smollm2-135m-instruct"


def test_local_streams_token_by_token(smollm, loopback_models):
    service = loopback_models.service
    smollm.decode_chunk, chunk = 2, smollm.decode_chunk  # several decode chunks for a few tokens
    try:
        deltas, response = split(list(service.stream(LOCAL, "Name three colours.", max_tokens=8, temperature=0)))
    finally:
        smollm.decode_chunk = chunk
    assert len(deltas) >= 3 and "".join(deltas) == response.text
    plain = service.invoke_model(LOCAL, "Name three colours.", max_tokens=8, temperature=0)
    assert response.text == plain.text and response.usage == plain.usage


def test_local_async_twin_with_a_stop(smollm, loopback_models):
    service = loopback_models.service

    async def main():
        return [i async for i in service.astream(LOCAL, "Count: 1, 2, 3,", max_tokens=8, temperature=0, stop=["5"])]

    deltas, response = split(asyncio.run(main()))
    assert "".join(deltas) == response.text and "5" not in response.text
    plain = service.invoke_model(LOCAL, "Count: 1, 2, 3,", max_tokens=8, temperature=0, stop=["5"])
    assert response.text == plain.text and response.usage == plain.usage
