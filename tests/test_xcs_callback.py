"""LLM calls inside traced JAX code (``ember.xcs._callback``), against the loopback server.

Structure is checked, never wall-clock: host-callback invocations, requests the server saw,
the most requests it had in flight at once, and what the memo holds.
"""

import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from ember.models import ModelService
from ember.models._cache import ResponseCache
from ember.operators import LMModule, Operator
from ember.testing import Fault
from ember.xcs._callback import PromptTable, generate_callback, llm_callback
from ember.xcs._transform_errors import (
    CallbackInputError,
    CallbackOutputError,
    NonDifferentiableError,
    PromptIdError,
    TransformError,
)
from tests.helpers import eventually

MODEL = "openai:gpt-4o-mini"


def arithmetic(n: int) -> PromptTable:
    """Prompts the loopback server answers exactly: id i asks for i + 1."""
    return PromptTable([f"What is {i} + 1?" for i in range(n)])


def chat_requests(server) -> list:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def asked(server) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in chat_requests(server)]


# -- one host call per batch, all calls in flight, nothing paid twice -------------------------------


def test_jit_vmap_is_one_host_call_with_every_request_in_flight(loopback_models, tmp_path):
    server = loopback_models.server
    server.latency = 0.3  # long enough that 16 concurrent requests overlap at the server
    table = arithmetic(16)
    llm = llm_callback(MODEL, table)

    out = jax.jit(jax.vmap(llm))(table.ids)

    assert llm.host_calls == 1 and llm.calls_started == 16
    assert server.stats.max_in_flight == 16
    assert sorted(asked(server)) == sorted(table)
    eager = jnp.stack([llm_callback(MODEL, table)(i) for i in range(16)])
    np.testing.assert_array_equal(out, eager)
    np.testing.assert_array_equal(out, np.arange(1, 17, dtype=np.float32))

    server.latency = 0.0
    service = ModelService(cache=ResponseCache(tmp_path / "cache"))
    try:
        cached = LMModule(MODEL, model_service=service)
        first = jax.jit(jax.vmap(llm_callback(cached, table)))(table.ids)  # fills the cache
        seen = len(chat_requests(server))
        again = jax.jit(jax.vmap(llm_callback(cached, table)))(table.ids)  # a fresh memo: only the cache
        assert len(chat_requests(server)) == seen
        np.testing.assert_array_equal(again, first)
    finally:
        service.close()


class TestVariants(chex.TestCase):
    """eager, jit and vmap give the same answers, each id asked once per callback."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_eager_jit_and_vmap_agree(self):
        table = PromptTable(["a", "bb", "ccc", "bb"])  # a repeated entry shares one answer
        seen = []

        def count_letters(entry):
            seen.append(entry)
            return len(entry)

        llm = llm_callback(count_letters, table)
        per_id = self.variant(llm)
        batched = self.variant(jax.vmap(llm))
        np.testing.assert_array_equal(jnp.stack([per_id(i) for i in range(4)]), [1, 2, 3, 2])
        np.testing.assert_array_equal(batched(table.ids), [1, 2, 3, 2])
        assert sorted(seen) == ["a", "bb", "ccc"]


def test_repeated_invocation_sends_nothing_again(loopback_models):
    server = loopback_models.server
    table = arithmetic(8)
    llm = llm_callback(MODEL, table)
    run = jax.jit(jax.vmap(llm))
    first = run(table.ids)
    second = run(table.ids)
    nested = jax.jit(jax.vmap(jax.vmap(llm)))(table.ids.reshape(2, 4))

    assert len(chat_requests(server)) == 8 and llm.calls_started == 8 and llm.memoized == 8
    assert llm.host_calls == 3  # each run is one host call, nested vmap included
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(nested.reshape(-1), first)


def test_concurrent_duplicates_share_one_call(loopback_models):
    server = loopback_models.server
    server.latency = 0.3
    table = arithmetic(8)
    llm = llm_callback(MODEL, table)
    run = jax.jit(jax.vmap(llm))
    run.lower(table.ids).compile()  # both threads run, neither traces
    start = threading.Barrier(2)
    results = [None, None]

    def call(slot):
        start.wait()
        results[slot] = run(table.ids)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert llm.host_calls == 2
    assert sorted(asked(server)) == sorted(table)  # each prompt requested once
    np.testing.assert_array_equal(results[0], results[1])


def test_repeated_entries_and_ids_are_asked_once(loopback_models):
    table = PromptTable(["What is 1 + 1?", "What is 2 + 2?", "What is 1 + 1?"])
    llm = llm_callback(MODEL, table)
    out = jax.jit(llm)(jnp.array([[0, 1, 2], [2, 2, 0]]))
    np.testing.assert_array_equal(out, [[2, 4, 2], [2, 2, 2]])
    assert sorted(asked(loopback_models.server)) == ["What is 1 + 1?", "What is 2 + 2?"]


# -- systems and results ----------------------------------------------------------------------------


class Classify(Operator):
    """A choice index: which of ``options`` the model's answer names."""

    options: tuple

    def forward(self, *, inputs):
        return {"choice": LMModule(MODEL)(inputs.query)}


def test_an_operator_with_a_parse_gives_choice_indices(loopback_models):
    table = PromptTable([{"query": "What is 1 + 1?"}, {"query": "What is 2 + 1?"}, {"query": "What is 0 + 1?"}])
    op = Classify(options=("1", "2", "3"))
    pick = llm_callback(
        op, table, result=jax.ShapeDtypeStruct((), jnp.int32), parse=lambda out: op.options.index(out["choice"])
    )
    np.testing.assert_array_equal(jax.jit(jax.vmap(pick))(table.ids), [1, 2, 0])


def test_vector_results_come_back_per_id():
    table = PromptTable(["ab", "xyz"])
    scores = llm_callback(
        lambda entry: [len(entry), entry.count("a")],
        table,
        result=jax.ShapeDtypeStruct((2,), jnp.float32),
        parse=lambda x: x,
    )
    out = jax.jit(jax.vmap(scores))(table.ids)
    assert out.shape == (2, 2) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, [[2, 1], [3, 0]])


# -- gradients --------------------------------------------------------------------------------------


def test_grad_through_a_call_raises_and_stop_gradient_makes_it_a_constant():
    table = PromptTable(["1", "2", "3"])
    llm = llm_callback(lambda entry: entry, table)
    x = jnp.arange(3.0)  # ids that carry a gradient

    with pytest.raises(NonDifferentiableError, match=r"no derivative.*stop_gradient"):
        jax.grad(lambda x: jnp.sum(llm(x)))(x)
    with pytest.raises(NonDifferentiableError):
        jax.jit(jax.grad(lambda x: jnp.sum(jax.vmap(llm)(x))))(x)

    grad = jax.grad(lambda x: jnp.sum(jax.lax.stop_gradient(llm(x)) * x))(x)
    np.testing.assert_array_equal(grad, [1.0, 2.0, 3.0])
    weight = jax.grad(lambda w: jnp.sum(w * llm(table.ids)))(1.0)  # integer ids carry no gradient
    assert float(weight) == 6.0


# -- failures ---------------------------------------------------------------------------------------


def test_a_failing_call_cancels_its_siblings_and_is_not_memoized(loopback_models):
    from ember.models import ContextLengthExceededError

    server = loopback_models.server
    server.latency = 0.1
    # The first request to arrive fails; the others would answer 30 s later, unless cancelled.
    server.faults = [Fault.context_length(on=[0]), Fault.slow(30.0)]
    table = arithmetic(6)
    llm = llm_callback(MODEL, table)
    run = jax.jit(jax.vmap(llm))

    with pytest.raises(jax.errors.JaxRuntimeError, match="ContextLengthExceededError"):
        run(table.ids)
    assert isinstance(llm.last_error, ContextLengthExceededError)
    assert eventually(lambda: sum(r.client_closed for r in chat_requests(server)) == 5)
    assert llm.memoized == 0

    server.faults = [Fault.context_length(on=[6]), Fault.slow(30.0)]  # the retry's first request fails
    with pytest.raises(ContextLengthExceededError), llm.reraise():
        run(table.ids)
    assert len(chat_requests(server)) == 12  # nothing was memoized: every prompt was asked again

    server.faults, server.latency = [], 0.0
    np.testing.assert_array_equal(run(table.ids), np.arange(1, 7))
    assert len(chat_requests(server)) == 18 and llm.memoized == 6


def test_eager_calls_raise_the_typed_error_itself(loopback_models):
    from ember.models import ContextLengthExceededError

    loopback_models.server.faults = [Fault.context_length()]
    llm = llm_callback(MODEL, arithmetic(2))
    with pytest.raises(ContextLengthExceededError):
        llm(jnp.arange(2))


def test_bad_ids_name_the_id_and_the_table_size():
    table = PromptTable(["a", "b", "c"])
    llm = llm_callback(len, table)
    with pytest.raises(PromptIdError, match=r"prompt id 7 .*3 prompts") as caught:
        llm(jnp.array([0, 7]))
    assert caught.value.prompt_id == 7 and caught.value.size == 3
    with pytest.raises(PromptIdError, match="prompt id -1"), llm.reraise():
        jax.jit(jax.vmap(llm))(jnp.array([-1, 0]))
    with pytest.raises(CallbackInputError, match="whole number"):
        llm(jnp.array([0.5]))
    with pytest.raises(PromptIdError):
        table[3]
    assert issubclass(PromptIdError, TransformError) and issubclass(PromptIdError, IndexError)


def test_bad_parse_output_names_the_shape_and_the_id():
    table = PromptTable(["a", "b"])
    pairs = llm_callback(len, table, parse=lambda n: [n, n])
    with pytest.raises(CallbackOutputError, match=r"prompt id 0: parse returned shape \(2,\).*float32\[\]"):
        pairs(jnp.arange(2))
    wordy = llm_callback(lambda entry: "no digits here", table)
    with pytest.raises(CallbackOutputError, match="no number"), wordy.reraise():
        jax.jit(wordy)(jnp.arange(2))
    assert wordy.memoized == 2  # the answers were paid for: a better parse reuses them
    with pytest.raises(TypeError, match="parse="):
        llm_callback(len, table, result=jax.ShapeDtypeStruct((3,), jnp.float32))


# -- shard_map ---------------------------------------------------------------------------------------


def test_shard_map_asks_each_id_once(loopback_models):
    server = loopback_models.server
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    table = arithmetic(16)

    sharded = llm_callback(MODEL, table)
    run = jax.jit(jax.shard_map(sharded, mesh=mesh, in_specs=PartitionSpec("batch"), out_specs=PartitionSpec("batch")))
    np.testing.assert_array_equal(run(table.ids), np.arange(1, 17))
    assert sharded.host_calls == 8  # one per device, each with its own two ids
    assert sorted(asked(server)) == sorted(table)

    server.reset()
    replicated = llm_callback(MODEL, table)  # every device holds every id: the memo absorbs replicas
    run = jax.jit(
        jax.shard_map(replicated, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(), check_vma=False)
    )
    np.testing.assert_array_equal(run(table.ids), np.arange(1, 17))
    assert replicated.host_calls == 8
    assert sorted(asked(server)) == sorted(table)


# -- the embedded model ------------------------------------------------------------------------------


def test_vmapped_token_generation_equals_generate_tokens(smollm):
    from ember.local import GenerationConfig

    prompts = [smollm.encode(p) for p in ("What is 2 + 2?", "Name a colour.", "What is 2 + 2?")]
    width = max(map(len, prompts)) + 3
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt
    lengths = np.array([len(p) for p in prompts], np.int32)
    gen = generate_callback(smollm, max_new_tokens=6)
    calls = smollm.stats.generate_calls

    out = np.asarray(jax.jit(jax.vmap(gen))(tokens, lengths))

    assert gen.host_calls == 1 and smollm.stats.generate_calls == calls + 1 and gen.calls_started == 2
    expected = smollm.generate_tokens(prompts, GenerationConfig(max_new_tokens=6))
    for row, generation in zip(out, expected, strict=True):
        ids = list(generation.token_ids)
        assert row.tolist() == ids + [smollm.tokenizer.pad_id] * (6 - len(ids))
    with pytest.raises(CallbackInputError, match=r"outside 1\.\."):
        gen(tokens, np.array([0, 1, 1], np.int32))
