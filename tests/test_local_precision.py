"""The embedded model in each weight precision it offers: float32, bfloat16, block int8 weight-only.

Each precision is checked against the float64 numpy reference of ``test_local_gguf`` (logits
within a stated tolerance, and the same argmax on every test prompt), on the cached decode
path, and on the greedy answers to the test questions, which must equal float32's. A
precision loads the model once for this module (``load_model`` caches it per precision).
"""

from __future__ import annotations

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ember.local import PRECISIONS, GenerationConfig, LocalModel, default_precision, load_model
from ember.local._gguf import read_gguf
from ember.local._model import resolve_precision
from ember.local._quant import BLOCK, QuantizedWeight, dequantize, linear, quantize_blocks, quantize_tensor
from tests.test_local_gguf import reference_logits, write_tiny_llama

# Max |logit - reference| over the whole vocabulary on PARITY_PROMPTS, measured on SmolLM2:
# float32 5.8e-5, bfloat16 0.95, int8 (float32 compute) 5.8e-5: SmolLM2's file is Q4_1, which
# int8 keeps exactly, so its logits are float32's (test_int8_logits_are_float32s below).
# Tolerances are ~2x those (float32 and int8 keep test_local_gguf's 1e-3). The logits span
# about [-20, 25].
LOGIT_TOLERANCE = {"float32": 1e-3, "bfloat16": 2.0, "int8": 1e-3}

# The same on test_local_gguf's random 2-layer model (logits within about +-5; measured:
# float32 4.5e-6, bfloat16 0.10, int8 4.5e-6: its Q8_0 matrices are held exactly, its F16
# one stays float; top-2 margins >= 0.66).
TINY_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "int8": 1e-3}

PARITY_PROMPTS = [("What is the capital of France?", True), ("Hi", True), ("The quick brown fox", False)]

# The test questions of test_local_model.py, with the new-token counts used there.
QUESTIONS = [
    ("What is the capital of France?", 16),
    ("Hi", 8),
    ("Name three primary colors, separated by commas please.", 8),
    ("Tell me a story.", 8),
]


@pytest.fixture(scope="module", params=PRECISIONS)
def model(request):
    return load_model(precision=request.param)


@pytest.fixture(scope="module")
def float32_model():
    return load_model(precision="float32")


@pytest.fixture(scope="module")
def contents(float32_model):
    return read_gguf(float32_model.path)


@pytest.fixture(scope="module")
def references(float32_model, contents):
    prompts = [float32_model.encode(text, chat=chat) for text, chat in PARITY_PROMPTS]
    return prompts, [reference_logits(contents.tensors, contents.metadata, ids) for ids in prompts]


@pytest.mark.slow
def test_logits_match_the_numpy_reference_within_the_precision_tolerance(model, references):
    prompts, refs = references
    ours = model.next_token_logits(prompts)  # one padded batch
    for row, ref in zip(ours, refs):
        assert np.max(np.abs(row - ref)) < LOGIT_TOLERANCE[model.precision]
        assert int(np.argmax(row)) == int(np.argmax(ref))


@pytest.mark.slow
def test_greedy_continuation_matches_the_reference(model, contents):
    """The cached decode path: each greedy token equals the reference's argmax."""
    ids = model.encode("The capital of France is", chat=False)
    [gen] = model.generate_tokens([ids], GenerationConfig(max_new_tokens=4, ignore_eos=True))
    context = list(ids)
    for token in gen.token_ids:
        assert token == int(np.argmax(reference_logits(contents.tensors, contents.metadata, context)))
        context.append(token)


@pytest.mark.slow
def test_greedy_answers_equal_float32s(model, float32_model):
    for question, n in QUESTIONS:
        [ours] = model.generate([question], GenerationConfig(max_new_tokens=n))
        [theirs] = float32_model.generate([question], GenerationConfig(max_new_tokens=n))
        assert ours.token_ids == theirs.token_ids, (model.precision, question, ours.text, theirs.text)
    [answer] = model.generate([QUESTIONS[0][0]], GenerationConfig(max_new_tokens=16))
    assert "Paris" in answer.text and answer.finish_reason == "stop"


@pytest.mark.slow
def test_weights_are_stored_in_the_precision(model):
    layers = model.params.layers
    if model.precision == "int8":
        assert isinstance(layers.wqkv, QuantizedWeight)
        q, scale, offset = layers.wqkv
        assert q.dtype == jnp.int8 and scale.shape == offset.shape == (*q.shape[:-1], q.shape[-1] // BLOCK)
        assert model.params.embed.dtype == model.dtype  # embeddings and norms stay in float
        assert layers.attn_norm.dtype == model.dtype
        assert model.param_bytes < 0.5 * load_model(precision="float32").param_bytes  # 233 MB vs 538 MB
    else:
        assert all(leaf.dtype == jnp.dtype(model.precision) for leaf in jax.tree.leaves(layers))


@pytest.mark.slow
def test_the_default_precision_is_the_measured_one(float32_model):
    assert default_precision() == ("int8" if jax.default_backend() == "cpu" else "bfloat16")
    assert load_model(precision=default_precision()) is load_model()
    assert load_model(dtype="float32") is float32_model  # the dtype argument still works


# ---------------------------------------------------------------- without the real model


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tiny_llama_in_each_precision_keeps_the_reference_argmax(tmp_path, precision):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path)
    model = LocalModel(path, precision=precision)
    contents = read_gguf(path)
    prompts = [[1, 40, 41, 42, 43, 44], [5, 6], list(range(3, 40))]
    for row, ids in zip(model.next_token_logits(prompts), prompts):
        ref = reference_logits(contents.tensors, contents.metadata, ids)
        assert np.max(np.abs(row - ref)) < TINY_TOLERANCE[precision]
        assert int(np.argmax(row)) == int(np.argmax(ref))


@pytest.mark.slow
def test_int8_logits_are_float32s(float32_model):
    """SmolLM2's Q4_1 kept as int8 blocks dequantizes to float32's very weights: same logits."""
    prompts = [float32_model.encode(text, chat=chat) for text, chat in PARITY_PROMPTS]
    int8 = load_model(precision="int8").next_token_logits(prompts)
    np.testing.assert_array_equal(int8, float32_model.next_token_logits(prompts))


def test_int8_holds_the_tiny_models_q8_0_matrices_and_keeps_its_f16_one_float(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path)
    int8, float32 = LocalModel(path, precision="int8"), LocalModel(path, precision="float32")
    layers = int8.params.layers
    assert all(isinstance(w, QuantizedWeight) for w in (layers.wo, layers.w_gate_up, layers.w_down))  # Q8_0
    assert layers.wqkv.dtype == jnp.float32  # Q and K are Q8_0, but V is F16 in the file
    prompts = [[1, 40, 41, 42, 43, 44], [5, 6]]
    np.testing.assert_array_equal(int8.next_token_logits(prompts), float32.next_token_logits(prompts))


def test_int8_blocks_are_symmetric_per_32_inputs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 16, 64)).astype(np.float32) * np.array([0.01, 100.0])[None, None].repeat(32, -1)
    q, scale, offset = quantize_blocks(w)
    assert q.dtype == np.int8 and scale.shape == offset.shape == (3, 16, 2) and not offset.any()
    assert np.all(np.max(np.abs(q.reshape(3, 16, 2, BLOCK)), axis=-1) == 127)
    qw = QuantizedWeight(*map(jnp.asarray, (q, scale, offset)))
    err = np.abs(np.asarray(dequantize(qw)) - w).reshape(3, 16, 2, BLOCK)
    assert np.all(err <= scale[..., None] / 2 * (1 + 1e-6))  # each block to its own scale
    x = rng.standard_normal((4, 64)).astype(np.float32)
    w1 = QuantizedWeight(qw.q[1], qw.scale[1], qw.offset[1])
    np.testing.assert_allclose(np.asarray(linear(x, w1)), x @ np.asarray(dequantize(qw))[1].T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 32"):
        quantize_blocks(np.ones((4, 48), np.float32))


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "F16"])
def test_int8_holds_q4_1_and_q8_0_exactly_and_nothing_else(tmp_path, qtype):
    """The file's own integers: dequantizing int8 gives the gguf reader's float32 values; a
    tensor it cannot hold exactly (F16 here) gets no blocks and stays float."""
    path = tmp_path / "one.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    kind = gguf.GGMLQuantizationType[qtype]
    data = np.random.default_rng(1).standard_normal((24, 96)).astype(np.float32)
    writer.add_tensor("w", gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.add_tensor("ragged", data[:, :40])  # no whole blocks
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    contents = read_gguf(path)
    assert contents.stored_types["w"] == qtype and quantize_tensor(contents, "ragged") is None
    if qtype == "F16":
        assert quantize_tensor(contents, "w") is None
        return
    q, scale, offset = quantize_tensor(contents, "w")
    assert q.shape == (24, 96) and scale.shape == (24, 3)
    np.testing.assert_array_equal(np.asarray(dequantize(QuantizedWeight(*map(jnp.asarray, (q, scale, offset))))), contents.tensors["w"])


def test_precision_and_dtype_options():
    assert resolve_precision("float32") == ("float32", jnp.dtype("float32"))
    assert resolve_precision("bfloat16") == ("bfloat16", jnp.dtype("bfloat16"))
    assert resolve_precision("int8", jnp.bfloat16) == ("int8", jnp.dtype("bfloat16"))
    assert resolve_precision(None, jnp.float16) == ("float16", jnp.dtype("float16"))  # the old dtype= form
    assert resolve_precision()[0] == default_precision()
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int4")
    with pytest.raises(ValueError, match="contradicts"):
        resolve_precision("bfloat16", jnp.float32)
