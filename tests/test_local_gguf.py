"""The local model against an independent reference, and GGUF files other than the default.

``reference_logits`` is a separately written plain-numpy Llama forward in float64. It works
from the dequantized GGUF tensors as llama.cpp does: Q/K weights in the file's permuted
layout with RoPE rotating adjacent pairs, one prompt at a time, no padding, no KV cache.
Our JAX model un-permutes Q/K and rotates halves, batches padded prompts and runs against a
cache, so agreement checks the layout, the masks and the cache path at once.
"""

from __future__ import annotations

import asyncio

import gguf
import numpy as np
import pytest

from ember.local import (
    CorruptModelFileError,
    GenerationConfig,
    LocalModel,
    ModelFileNotFoundError,
    PromptTooLongError,
    UnsupportedModelError,
    load_model,
)
from ember.local._gguf import read_gguf
from ember.models._errors import ContextLengthExceededError, ModelNotFoundError, ProviderError
from ember.models._types import ChatRequest, Message
from ember.models.providers._base import ProviderSettings
from ember.models.providers.local import LocalProvider

# float32 JAX vs float64 numpy: the measured max |diff| over the whole vocabulary was
# 9.1e-5 for SmolLM2 (30 layers) and 4.0e-6 for the tiny model; ~10x margin.
LOGIT_ATOL = 1e-3


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def reference_logits(tensors: dict[str, np.ndarray], meta: dict, ids: list[int]) -> np.ndarray:
    """Next-token logits after ``ids``, float64, llama.cpp conventions."""
    t = tensors
    n_layers = int(meta["llama.block_count"])
    n_head = int(meta["llama.attention.head_count"])
    n_kv = int(meta["llama.attention.head_count_kv"])
    eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
    theta = float(meta["llama.rope.freq_base"])
    x = t["token_embd.weight"][ids].astype(np.float64)
    n, dim = x.shape
    hd = dim // n_head
    angles = np.arange(n)[:, None] * theta ** (-np.arange(0, hd, 2) / hd)[None, :]  # [n, hd/2]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]

    def rope_pairs(v: np.ndarray) -> np.ndarray:  # v [n, heads, hd]; rotate (v[2i], v[2i+1])
        even, odd = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    causal = np.tril(np.ones((n, n), bool))
    for i in range(n_layers):
        def w(name, i=i):
            return t[f"blk.{i}.{name}.weight"].astype(np.float64)

        h = _rms(x, w("attn_norm"), eps)
        q = rope_pairs((h @ w("attn_q").T).reshape(n, n_head, hd))
        k = rope_pairs((h @ w("attn_k").T).reshape(n, n_kv, hd))
        v = (h @ w("attn_v").T).reshape(n, n_kv, hd)
        heads = []
        for head in range(n_head):
            kv = head // (n_head // n_kv)
            scores = q[:, head] @ k[:, kv].T / np.sqrt(hd)
            scores = np.where(causal, scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append((p / p.sum(-1, keepdims=True)) @ v[:, kv])
        x = x + np.concatenate(heads, axis=-1) @ w("attn_output").T
        h = _rms(x, w("ffn_norm"), eps)
        gate = h @ w("ffn_gate").T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w("ffn_up").T)) @ w("ffn_down").T
    out = t.get("output.weight", t["token_embd.weight"]).astype(np.float64)
    return out @ _rms(x[-1], t["output_norm.weight"].astype(np.float64), eps)


# ---------------------------------------------------------------- a tiny Llama GGUF, written here


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 byte-level BPE base symbols."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_tiny_llama(path, *, arch: str = "llama", seed: int = 0) -> None:
    """A 2-layer random Llama GGUF: GQA 4:2, untied output, Q8_0/F16/F32 tensors, ChatML."""
    rng = np.random.default_rng(seed)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = _byte_symbols()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    tokens = special + symbols + ["Ġt", "he", "Ġthe", "in", "Ġa"]
    dim, hidden, n_layers, n_head, n_kv = 64, 96, 2, 4, 2
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3] * len(special) + [1] * (len(tokens) - len(special)))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}")
    q8, f16 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16

    def add(name: str, shape: tuple[int, ...], qtype=None, scale: float = 0.2) -> None:
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype is None:
            w.add_tensor(name, data)
        elif qtype == f16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    add("token_embd.weight", (len(tokens), dim), q8, 1.0)
    add("output.weight", (len(tokens), dim), f16)
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    hd = dim // n_head
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
        add(f"blk.{i}.attn_q.weight", (n_head * hd, dim), q8)
        add(f"blk.{i}.attn_k.weight", (n_kv * hd, dim), q8)
        add(f"blk.{i}.attn_v.weight", (n_kv * hd, dim), f16)
        add(f"blk.{i}.attn_output.weight", (dim, n_head * hd), q8)
        add(f"blk.{i}.ffn_gate.weight", (hidden, dim), q8)
        add(f"blk.{i}.ffn_up.weight", (hidden, dim), q8)
        add(f"blk.{i}.ffn_down.weight", (dim, hidden), q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_llama(path)
    return path


@pytest.fixture(scope="module")
def smollm_gguf(smollm):
    return read_gguf(smollm.path)


# ---------------------------------------------------------------- parity


def _parity(model: LocalModel, contents, prompts: list[list[int]]) -> float:
    ours = model.next_token_logits(prompts)  # one padded batch
    worst = 0.0
    for row, ids in zip(ours, prompts):
        ref = reference_logits(contents.tensors, contents.metadata, ids)
        worst = max(worst, float(np.max(np.abs(row - ref))))
        assert int(np.argmax(row)) == int(np.argmax(ref))
    return worst


@pytest.mark.slow
def test_smollm2_next_token_logits_match_numpy_reference(smollm, smollm_gguf):
    prompts = [
        smollm.encode("What is the capital of France?"),
        smollm.encode("Hi"),
        smollm.encode("The quick brown fox", chat=False),
    ]
    assert len({len(p) for p in prompts}) == 3  # different lengths: padding and masks matter
    worst = _parity(smollm, smollm_gguf, prompts)
    assert worst < LOGIT_ATOL, worst


@pytest.mark.slow
def test_smollm2_greedy_continuation_matches_reference(smollm, smollm_gguf):
    """The cached decode path: each greedy token equals the reference's argmax."""
    contents = smollm_gguf
    ids = smollm.encode("The capital of France is", chat=False)
    [gen] = smollm.generate_tokens([ids], GenerationConfig(max_new_tokens=4, ignore_eos=True))
    context = list(ids)
    for token in gen.token_ids:
        assert token == int(np.argmax(reference_logits(contents.tensors, contents.metadata, context)))
        context.append(token)


def test_tiny_llama_logits_match_reference(tiny_path):
    model = LocalModel(tiny_path)
    assert model.params.output is not None  # untied output projection
    worst = _parity(model, read_gguf(tiny_path), [[1, 40, 41, 42, 43, 44], [5, 6], list(range(3, 40))])
    assert worst < LOGIT_ATOL, worst


def test_tiny_llama_decode_matches_reference(tiny_path):
    model = LocalModel(tiny_path)
    contents = read_gguf(tiny_path)
    ids = [1, 70, 71, 72]
    [gen] = model.generate_tokens([ids], GenerationConfig(max_new_tokens=6, ignore_eos=True))
    context = list(ids)
    for token in gen.token_ids:
        assert token == int(np.argmax(reference_logits(contents.tensors, contents.metadata, context)))
        context.append(token)


# ---------------------------------------------------------------- other files through the provider


def test_any_llama_gguf_path_serves_through_the_provider(tiny_path):
    provider = LocalProvider(ProviderSettings(name="local", kind="local"))
    request = ChatRequest(model_name=str(tiny_path), messages=(Message("user", "the"),), max_tokens=5, temperature=0.0)
    result = asyncio.run(provider.acomplete(request))
    assert result.output_tokens >= 1 and result.input_tokens > 0
    assert result.finish_reason in ("stop", "length")
    assert provider.describe_model(str(tiny_path))["context_window"] == 256


def test_config_alias_names_a_gguf(tiny_path):
    provider = LocalProvider(ProviderSettings(name="local", kind="local", options={"models": {"tiny": str(tiny_path)}}))
    assert provider.describe_model("tiny")["context_window"] == 256


def test_non_llama_architecture_is_a_typed_error(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_tiny_llama(path, arch="gpt2")
    with pytest.raises(UnsupportedModelError, match="architecture is 'gpt2'"):
        LocalModel(path)
    provider = LocalProvider(ProviderSettings(name="local", kind="local"))
    with pytest.raises(ProviderError, match="Llama-architecture") as err:
        provider.describe_model(str(path))
    assert not err.value.retryable and isinstance(err.value.__cause__, UnsupportedModelError)


def test_missing_file_is_model_not_found(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelFileNotFoundError, match="No GGUF file"):
        read_gguf(missing)
    provider = LocalProvider(ProviderSettings(name="local", kind="local"))
    request = ChatRequest(model_name=str(missing), messages=(Message("user", "hi"),))
    with pytest.raises(ModelNotFoundError, match="no file exists") as err:
        asyncio.run(provider.acomplete(request))
    assert isinstance(err.value.__cause__, ModelFileNotFoundError)


def test_not_a_gguf_file_is_a_corrupt_file_error(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(CorruptModelFileError, match="not a readable GGUF"):
        load_model(path)
    provider = LocalProvider(ProviderSettings(name="local", kind="local"))
    request = ChatRequest(model_name=str(path), messages=(Message("user", "hi"),))
    with pytest.raises(ProviderError, match="not a readable GGUF") as err:
        asyncio.run(provider.acomplete(request))
    assert not err.value.retryable and isinstance(err.value.__cause__, CorruptModelFileError)


def test_prompt_longer_than_the_context_is_typed_in_both_layers(tiny_path):
    model = LocalModel(tiny_path)
    with pytest.raises(PromptTooLongError) as err:
        model.generate_tokens([[5] * 256])  # the tiny model's context is 256 tokens
    assert (err.value.prompt_tokens, err.value.context_window) == (256, 256)
    provider = LocalProvider(ProviderSettings(name="local", kind="local"))
    request = ChatRequest(model_name=str(tiny_path), messages=(Message("user", "the " * 300),), max_tokens=4)
    with pytest.raises(ContextLengthExceededError, match="context window is 256") as err:
        asyncio.run(provider.acomplete(request))
    assert isinstance(err.value.__cause__, PromptTooLongError)
