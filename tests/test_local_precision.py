"""The embedded model in each weight precision it offers: float32, bfloat16, int8 weight-only.

Each precision is checked against the float64 numpy reference of ``test_local_gguf`` (logits
within a stated tolerance, and the same argmax on every test prompt), on the cached decode
path, and on the greedy answers to the test questions, which must equal float32's. A
precision loads the model once for this module (``load_model`` caches it per precision).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ember.local import PRECISIONS, GenerationConfig, LocalModel, default_precision, load_model
from ember.local._gguf import read_gguf
from ember.local._model import resolve_precision
from ember.local._quant import QuantizedWeight, dequantize, linear, quantize_int8
from tests.test_local_gguf import reference_logits, write_tiny_llama

# Max |logit - reference| over the whole vocabulary on PARITY_PROMPTS, measured on SmolLM2:
# float32 5.8e-5, bfloat16 0.95, int8 (float32 compute) 1.28. Tolerances are ~2x those
# (float32 keeps test_local_gguf's 1e-3). The logits span about [-20, 25].
LOGIT_TOLERANCE = {"float32": 1e-3, "bfloat16": 2.0, "int8": 2.5}

# The same on test_local_gguf's random 2-layer model (logits within about +-5; measured:
# float32 4.5e-6, bfloat16 0.10, int8 0.17; top-2 margins >= 0.66).
TINY_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "int8": 0.4}

PARITY_PROMPTS = [("What is the capital of France?", True), ("Hi", True), ("The quick brown fox", False)]

# The test questions of test_local_model.py, with the new-token counts used there.
QUESTIONS = [
    ("What is the capital of France?", 16),
    ("Hi", 8),
    ("Name three primary colors, separated by commas please.", 8),
    ("Tell me a story.", 8),
]

# int8 changes one greedy answer: "Hi" gives "Hello! How can I help you today" where float32
# and bfloat16 say "... assist you today" (token 6 of 8). So int8 is offered, never a default.
# (precision, question) -> how many leading tokens still agree.
KNOWN_DIVERGENCES = {("int8", "Hi"): 5}


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
        agree = KNOWN_DIVERGENCES.get((model.precision, question))
        if agree is None:
            assert ours.token_ids == theirs.token_ids, (model.precision, question, ours.text, theirs.text)
        else:  # a stated divergence: the first tokens agree, then the answer changes
            assert ours.token_ids[:agree] == theirs.token_ids[:agree]
            assert ours.token_ids != theirs.token_ids
    [answer] = model.generate([QUESTIONS[0][0]], GenerationConfig(max_new_tokens=16))
    assert "Paris" in answer.text and answer.finish_reason == "stop"


@pytest.mark.slow
def test_weights_are_stored_in_the_precision(model):
    layers = model.params.layers
    if model.precision == "int8":
        assert isinstance(layers.wq, QuantizedWeight)
        assert layers.wq.q.dtype == jnp.int8 and layers.wq.scale.shape == layers.wq.q.shape[:-1]
        assert model.params.embed.dtype == model.dtype  # embeddings and norms stay in float
        assert layers.attn_norm.dtype == model.dtype
        assert model.param_bytes < 0.45 * load_model(precision="float32").param_bytes  # 220 MB vs 538 MB
    else:
        assert all(leaf.dtype == jnp.dtype(model.precision) for leaf in jax.tree.leaves(layers))


@pytest.mark.slow
def test_the_default_precision_is_the_measured_one(float32_model):
    assert default_precision() == ("float32" if jax.default_backend() == "cpu" else "bfloat16")
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


def test_int8_quantization_is_per_output_channel_and_symmetric():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 16, 32)).astype(np.float32) * np.array([0.01, 1.0, 100.0])[:, None, None]
    qw = quantize_int8(w)
    assert qw.q.dtype == jnp.int8 and qw.scale.shape == (3, 16)
    assert int(jnp.max(jnp.abs(qw.q))) == 127
    err = np.abs(np.asarray(dequantize(qw)) - w)
    assert np.all(err <= np.asarray(qw.scale)[..., None] / 2 + 1e-7)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(linear(x, QuantizedWeight(qw.q[1], qw.scale[1]))), x @ np.asarray(dequantize(qw))[1].T, rtol=1e-5, atol=1e-5)


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
