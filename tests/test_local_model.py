"""Generation with the embedded SmolLM2-135M-Instruct: answers, batching, sampling, stops,
shape buckets and sharding. The model loads once per test session (the ``smollm`` fixture);
answers are kept short because CPU decoding runs at ~20 tokens/s per batch step."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from ember.local import GenerationConfig, _generate, load_model
from ember.local._sampling import SamplingParams

pytestmark = pytest.mark.slow  # every test here uses the real smollm

SHORT = GenerationConfig(max_new_tokens=8)


def test_greedy_answers_the_capital_of_france(smollm):
    [answer] = smollm.generate(["What is the capital of France?"], GenerationConfig(max_new_tokens=16))
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"
    assert answer.prompt_tokens == len(smollm.encode("What is the capital of France?"))


def test_load_model_is_cached_per_process(smollm):
    assert load_model() is smollm
    assert load_model("smollm2-135m-instruct") is smollm


def test_padded_batch_rows_equal_single_rows(smollm):
    prompts = ["What is the capital of France?", "Hi", "Name three primary colors, separated by commas please."]
    assert len({len(smollm.encode(p)) for p in prompts}) == 3
    batched = smollm.generate(prompts, SHORT)
    for prompt, row in zip(prompts, batched):
        [alone] = smollm.generate([prompt], SHORT)
        assert alone.token_ids == row.token_ids


def test_chat_template_from_the_gguf(smollm):
    default = smollm.tokenizer.decode(smollm.encode("Hi"))
    assert "You are a helpful AI assistant named SmolLM" in default  # the template's own default
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]
    ids = smollm.encode(messages)
    assert ids[0] == smollm.tokenizer.token_id("<|im_start|>")
    text = smollm.tokenizer.decode(ids)
    assert "Answer in one word." in text and "SmolLM" not in text
    [answer] = smollm.generate([messages], SHORT)
    assert answer.text.strip()


def test_seeded_sampling_is_deterministic_and_independent_of_the_batch(smollm):
    configs = [GenerationConfig(max_new_tokens=8, temperature=1.0, seed=s) for s in (1, 1, 2, 3)]
    out = smollm.generate(["Tell me a story."] * 4, configs)
    assert out[0].token_ids == out[1].token_ids  # same seed, same sample
    assert len({o.token_ids for o in out[1:]}) == 3  # different seeds, different samples
    again = smollm.generate(["Hi", "Tell me a story.", "Bye"], [SHORT, configs[2], SHORT])  # other neighbours
    assert again[1].token_ids == out[2].token_ids


def test_top_k_one_and_tiny_top_p_are_greedy(smollm):
    [greedy] = smollm.generate(["Tell me a story."], SHORT)
    k1, p_small, free = smollm.generate(
        ["Tell me a story."] * 3,
        [GenerationConfig(max_new_tokens=8, temperature=1.5, top_k=1, seed=4),
         GenerationConfig(max_new_tokens=8, temperature=1.5, top_p=1e-4, seed=5),
         GenerationConfig(max_new_tokens=8, temperature=1.5, seed=6)],
    )
    assert k1.token_ids == greedy.token_ids == p_small.token_ids
    assert free.token_ids != greedy.token_ids


def test_stop_string_cuts_text_and_counts_tokens_up_to_it(smollm):
    [answer] = smollm.generate(["What is the capital of France?"], GenerationConfig(max_new_tokens=16, stop=("Paris",)))
    assert answer.finish_reason == "stop"
    assert "Paris" not in answer.text and answer.text.startswith("The capital")
    assert "Paris" in smollm.tokenizer.decode(answer.token_ids)
    assert "Paris" not in smollm.tokenizer.decode(answer.token_ids[:-1])


def test_max_new_tokens_and_length_finish(smollm):
    [answer] = smollm.generate(["Write a long essay about the sea."], GenerationConfig(max_new_tokens=3))
    assert answer.finish_reason == "length" and answer.completion_tokens == 3


def test_decoding_stops_when_every_row_is_done(smollm):
    steps = smollm.stats.decode_steps
    [answer] = smollm.generate(["What is the capital of France?"], GenerationConfig(max_new_tokens=48))
    assert answer.finish_reason == "stop" and answer.completion_tokens < 16
    assert smollm.stats.decode_steps - steps < answer.completion_tokens + smollm.decode_chunk


def test_finished_rows_are_dropped_to_a_smaller_batch(smollm):
    prompts = ["Hi", "Bye", "What?", "Yo"]
    assert _generate.prompt_bucket(max(len(smollm.encode(p)) for p in prompts)) == 32
    long = GenerationConfig(max_new_tokens=84, ignore_eos=True)  # >= 64 steps left after the first chunk
    short = GenerationConfig(max_new_tokens=2)
    compactions = smollm.stats.compactions
    out = smollm.generate(prompts, [long, short, short, short])
    assert smollm.stats.compactions == compactions + 1
    assert [g.completion_tokens for g in out] == [84, 2, 2, 2]
    [alone] = smollm.generate(prompts[:1], long)
    assert alone.token_ids == out[0].token_ids


def test_deadline_stops_a_row(smollm):
    [answer] = smollm.generate(["Write a long essay."], GenerationConfig(max_new_tokens=200), deadlines=[time.monotonic()])
    assert answer.finish_reason == "timeout" and answer.completion_tokens < 200


def test_prompt_lengths_in_one_bucket_reuse_compiled_programs(smollm):
    prompts = ["Tell me a story.", "What is the capital of France?", "Hello there, how are you doing on this fine day?"]
    assert len({len(smollm.encode(p)) for p in prompts}) == 3
    smollm.generate(prompts[:1], SHORT)
    programs = (_generate._prompts, _generate._begin, _generate._decode)
    compiled = [p._cache_size() for p in programs]
    smollm.generate(prompts[1:2], SHORT)
    smollm.generate(prompts[2:], GenerationConfig(max_new_tokens=5))
    assert [p._cache_size() for p in programs] == compiled


def test_sharded_generation_gives_the_same_tokens(smollm):
    assert len(jax.devices()) >= 8, "the root conftest.py sets 8 fake CPU devices"
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    prompts = ["What is 2+2?", "Name a color.", "Write a haiku about the sea.", "What is the capital of France?",
               "Hi", "Tell me a joke.", "What is JAX?", "Count to five."]
    configs = [GenerationConfig(max_new_tokens=6, temperature=0.9 if i % 2 else 0.0, top_p=0.9, seed=i) for i in range(8)]
    plain = smollm.generate(prompts, configs)
    sharded = smollm.generate(prompts, configs, mesh=mesh)
    assert [g.token_ids for g in sharded] == [g.token_ids for g in plain]

    # The KV cache and the per-row state really are split over the batch axis.
    tokens = np.zeros((8, 16), np.int32)
    def put(x):
        return jax.device_put(x, _generate._batch_spec(mesh, "batch", x.ndim))

    sampling = SamplingParams(
        *(put(x) for x in (np.zeros(8, np.float32), np.zeros(8, np.int32), np.ones(8, np.float32),
                           np.zeros((8, 2), np.uint32), np.ones(8, np.int32), np.ones(8, bool)))
    )
    params, start = smollm._params_on(mesh, "batch"), put(np.zeros(8, np.int32))
    hidden, scratch = _generate._prompts(params, put(tokens), start, config=smollm.config)
    state, _ = _generate._begin(
        params, hidden, scratch, start, put(np.arange(8, dtype=np.int32)), sampling, np.asarray([2], np.int32),
        cache_len=64, mode="greedy", mesh=mesh, axis="batch",
    )
    assert state.cache.k.sharding.spec == PartitionSpec(None, "batch")
    assert state.token.sharding.spec == PartitionSpec("batch")
    assert len(state.cache.k.sharding.device_set) == 8
    smollm._placed.pop(mesh)  # the 8 replicated weight copies (~4 GB on fake CPU devices)


def test_prefill_in_chunks_equals_the_whole_prompt_at_once(smollm):
    questions = ("What is the capital of France? Answer in one word, please.", "Name a colour.")
    rows = [_generate._row(_generate.GenerationRequest(smollm.encode(q)), smollm.config.context_length) for q in questions]
    [whole] = _generate._prefills(rows, smollm.tokenizer.pad_id, chunk=64)
    [chunked] = _generate._prefills(rows, smollm.tokenizer.pad_id, chunk=16)
    assert whole.tokens.shape == chunked.tokens.shape == (2, 48) and not whole.chunked
    stats = _generate.GenerationStats()
    while chunked.calls_left:
        chunked.advance(smollm.params, smollm.config, stats)
    whole.advance(smollm.params, smollm.config, stats)
    assert stats.prefill_chunks == 3 and whole.calls_left == 0
    np.testing.assert_allclose(np.asarray(chunked.hidden), np.asarray(whole.hidden), rtol=0, atol=1e-4)
    for got, want in zip(chunked.scratch, whole.scratch):  # [L, U, H, T, D]; slots before start are never read
        for u, first in enumerate(whole.start):
            np.testing.assert_allclose(np.asarray(got[:, u, :, first:]), np.asarray(want[:, u, :, first:]), atol=1e-4)
