"""A Llama-family decoder in JAX: parameters as a plain pytree, one forward against a KV cache.

Why plain pytrees (NamedTuples of arrays) rather than Flax NNX modules: the weights are
loaded, never trained, so there is no module state to split and merge; the 30 layers are
stacked on a leading axis so ``lax.scan`` compiles one layer instead of 30 (a decode step
compiles in 1.5 s scanned, 11 s unrolled, on the dev machine); and placing a pytree on a
mesh is one ``jax.device_put`` with a ``NamedSharding``.

One function serves prefill (``T`` new tokens) and decode (``T == 1``). Prompts are
left-padded so every row writes its new keys and values at the same cache slot; a row's
real tokens start at ``start[b]``, which gives both its positions and its attention mask.

RoPE layout: llama.cpp's converter permutes the Q and K projections of Hugging Face
checkpoints so that its rotary embedding rotates adjacent pairs ``(x[2i], x[2i+1])``. We
undo that permutation once at load time and rotate the two halves ``(x[i], x[i + d/2])``,
which is a slice instead of a strided gather. (The numpy reference in the tests keeps the
file's layout and rotates pairs, so the two paths check each other.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ember.local._errors import UnsupportedModelError
from ember.local._quant import Blocks, QuantizedWeight, linear

__all__ = ["KVCache", "LayerParams", "LlamaConfig", "LlamaParams", "forward", "init_cache", "params_from_gguf", "unembed"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture hyperparameters, read from a GGUF's ``llama.*`` metadata. Hashable, so it
    is a static argument of the jitted functions."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    rope_theta: float
    rope_linear_scale: float
    norm_eps: float
    context_length: int

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], *, model: str | None = None) -> LlamaConfig:
        """Read the ``llama.*`` keys; raises :class:`UnsupportedModelError` for a file this
        decoder cannot run (``model`` only names the file in that error)."""
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise UnsupportedModelError(
                f"ember.local runs Llama-architecture GGUF models; this file's architecture is {arch!r}",
                model=model,
            )
        if int(meta.get("llama.expert_count", 0) or 0) > 0:
            raise UnsupportedModelError("mixture-of-experts Llama models are not supported by ember.local", model=model)
        n_heads = int(meta["llama.attention.head_count"])
        dim = int(meta["llama.embedding_length"])
        head_dim = int(meta.get("llama.attention.key_length", dim // n_heads))
        rope_dims = int(meta.get("llama.rope.dimension_count", head_dim))
        if rope_dims != head_dim:
            raise UnsupportedModelError(
                f"partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported", model=model
            )
        scaling = meta.get("llama.rope.scaling.type", "none")
        if scaling not in ("none", "linear"):
            raise UnsupportedModelError(f"RoPE scaling {scaling!r} is not supported (only linear)", model=model)
        vocab = meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
        return cls(
            vocab_size=int(vocab),
            dim=dim,
            n_layers=int(meta["llama.block_count"]),
            n_heads=n_heads,
            n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            hidden_dim=int(meta["llama.feed_forward_length"]),
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
            rope_linear_scale=float(meta.get("llama.rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0,
            norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            context_length=int(meta.get("llama.context_length", 2048)),
        )


class LayerParams(NamedTuple):
    """One decoder layer's weights, each stacked over layers on axis 0. Matrices keep the
    file's ``(out, in)`` order: no transpose at load, and XLA:CPU multiplies by a transposed
    right operand as fast as by a plain one (24-28 ms vs 33 ms for a [32, 576] x [576, 12288]
    product on the dev machine)."""

    attn_norm: jax.Array  # [L, D]
    # The four projection matrices are :class:`QuantizedWeight` (int8 + a scale and offset
    # per block of 32 inputs) when loaded ``quantized``. Blocks run along the input axis, so
    # the RoPE un-permutation of Q/K rows moves whole blocks. Q, K and V rows are stacked (and
    # gate and up): one matmul instead of three (two); a decode step of SmolLM2 got 4-6%
    # faster at batch 1 on the dev machine (float32 and int8).
    wqkv: jax.Array | QuantizedWeight  # [L, (H + 2*Hkv)*Dh, D]
    wo: jax.Array | QuantizedWeight  # [L, D, H*Dh]
    mlp_norm: jax.Array  # [L, D]
    w_gate_up: jax.Array | QuantizedWeight  # [L, 2*F, D]
    w_down: jax.Array | QuantizedWeight  # [L, D, F]


class LlamaParams(NamedTuple):
    embed: jax.Array  # [V, D]
    layers: LayerParams
    final_norm: jax.Array  # [D]
    #: Output projection ``[V, D]``; ``None`` when tied to ``embed`` (SmolLM2 ties them).
    output: jax.Array | None
    #: RoPE inverse frequencies ``[Dh/2]``, with a GGUF's ``rope_freqs`` factors applied.
    rope_inv_freq: jax.Array


class KVCache(NamedTuple):
    """Keys and values of every layer, ``[L, B, Hkv, S, Dh]``: each (row, KV head) holds a
    contiguous ``[S, Dh]`` block, so attention is a batched matmul without transposing the
    cache (2.6x faster than the ``[L, B, S, Hkv, Dh]`` layout at batch 32, 128 slots)."""

    k: jax.Array
    v: jax.Array


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's ``permute`` of a Q/K weight ``(out, in)``: pairs back to halves."""
    out, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_heads, out // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def params_from_gguf(
    tensors: Mapping[str, np.ndarray],
    config: LlamaConfig,
    dtype: Any,
    *,
    quantized: Callable[[str], Blocks | None] | None = None,
) -> LlamaParams:
    """Stack the GGUF's per-layer tensors into :class:`LlamaParams` of ``dtype``. With
    ``quantized`` (a tensor name to its exact int8 blocks or ``None``,
    :func:`ember.local._quant.quantize_tensor`), a projection whose parts have blocks in every
    layer becomes a :class:`QuantizedWeight`."""

    def stack(*parts: str | tuple[str, Callable[[np.ndarray], np.ndarray]], matrix: bool = True) -> jax.Array | QuantizedWeight:
        """Each layer's ``parts`` (GGUF names, with a transform of their rows), rows concatenated."""
        named = [(p, lambda w: w) if isinstance(p, str) else p for p in parts]
        names = [[f"blk.{i}.{name}.weight" for name, _ in named] for i in range(config.n_layers)]

        def layer(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([transform(a) for (_, transform), a in zip(named, arrays)])

        blocks = [[quantized(n) for n in layer_names] for layer_names in names] if quantized is not None and matrix else []
        if blocks and all(b is not None for layer_blocks in blocks for b in layer_blocks):  # (q, scale, offset)
            return QuantizedWeight(*(jnp.asarray(np.stack([layer([b[k] for b in lb]) for lb in blocks])) for k in range(3)))
        return jnp.asarray(np.stack([layer([tensors[n] for n in layer_names]) for layer_names in names]), dtype=dtype)

    layers = LayerParams(
        attn_norm=stack("attn_norm", matrix=False),
        wqkv=stack(
            ("attn_q", lambda w: _unpermute_rope(w, config.n_heads)),
            ("attn_k", lambda w: _unpermute_rope(w, config.n_kv_heads)),
            "attn_v",
        ),
        wo=stack("attn_output"),
        mlp_norm=stack("ffn_norm", matrix=False),
        w_gate_up=stack("ffn_gate", "ffn_up"),
        w_down=stack("ffn_down"),
    )
    half = config.head_dim // 2
    inv_freq = config.rope_theta ** (-np.arange(half, dtype=np.float64) * 2 / config.head_dim)
    if "rope_freqs.weight" in tensors:  # Llama 3.1+ long-context frequency factors
        inv_freq = inv_freq / tensors["rope_freqs.weight"].astype(np.float64)
    output = tensors.get("output.weight")
    return LlamaParams(
        embed=jnp.asarray(tensors["token_embd.weight"], dtype=dtype),
        layers=layers,
        final_norm=jnp.asarray(tensors["output_norm.weight"], dtype=dtype),
        output=None if output is None else jnp.asarray(output, dtype=dtype),
        rope_inv_freq=jnp.asarray(inv_freq / config.rope_linear_scale, dtype=jnp.float32),
    )


def init_cache(config: LlamaConfig, batch: int, length: int, dtype: Any) -> KVCache:
    shape = (config.n_layers, batch, config.n_kv_heads, length, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


_linear = linear  # ``x @ w.T`` for a weight stored ``(out, in)``, plain or block int8 (ember.local._quant)


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def _rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate ``x [B, T, H, Dh]`` by ``positions [B, T]`` (half-split layout)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, Dh/2]
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, config: LlamaConfig) -> jax.Array:
    """Grouped-query attention: ``q [B,T,H,Dh]`` over ``k, v [B,Hkv,S,Dh]``, ``mask [B,T,S]``."""
    b, t = q.shape[:2]
    groups = config.n_heads // config.n_kv_heads
    q = q.reshape(b, t, config.n_kv_heads, groups, config.head_dim)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (config.head_dim**-0.5)
    # A finite floor, not -inf: a padding query sees no key, and must not produce NaN.
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    # Heads-major out, then transposed: with ``btkgd`` straight out of the einsum XLA:CPU
    # computed V^T P^T as 24 tiny plain dots, 2.2 ms of a 28 ms batch-8 decode step; this
    # form runs as one YNNPACK fusion (0.3 ms).
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, t, config.n_heads * config.head_dim)


def forward(
    params: LlamaParams,
    config: LlamaConfig,
    tokens: jax.Array,
    start: jax.Array,
    slot: jax.Array,
    cache: KVCache,
    window: int,
) -> tuple[jax.Array, KVCache]:
    """Run ``tokens [B, T]`` written at cache slots ``slot .. slot+T-1``.

    ``start [B]`` is the first cache slot holding a real token of each row (left padding
    before it). Row ``b``'s token at slot ``s`` has position ``s - start[b]`` and attends
    to slots ``start[b] .. s``. Attention reads only the first ``window`` slots (static;
    ``slot + T <= window``), so early decode steps do not pay for the whole cache.
    Returns the final-norm hidden state of the last position ``[B, D]`` and the cache.
    """
    b, t = tokens.shape
    query_slots = slot + jnp.arange(t)  # [T]
    positions = jnp.maximum(query_slots[None, :] - start[:, None], 0)  # [B, T]
    key_slots = jnp.arange(window)
    mask = (key_slots[None, None, :] >= start[:, None, None]) & (key_slots[None, None, :] <= query_slots[None, :, None])
    x = params.embed[tokens]
    n_q, n_kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim

    def layer(carry, inputs):
        x, k_cache, v_cache = carry
        i, p = inputs
        h = _rms_norm(x, p.attn_norm, config.norm_eps)
        q, k, v = jnp.split(_linear(h, p.wqkv), [n_q, n_q + n_kv], axis=-1)
        q = q.reshape(b, t, config.n_heads, config.head_dim)
        k = k.reshape(b, t, config.n_kv_heads, config.head_dim)
        v = v.reshape(b, t, config.n_kv_heads, config.head_dim)
        q = _rope(q, positions, params.rope_inv_freq)
        k = _rope(k, positions, params.rope_inv_freq)
        zero = jnp.zeros((), jnp.int32)
        at = (i, zero, zero, slot, zero)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.swapaxes(1, 2)[None].astype(k_cache.dtype), at)
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.swapaxes(1, 2)[None].astype(v_cache.dtype), at)
        attn = _attention(q, k_cache[i, :, :, :window], v_cache[i, :, :, :window], mask, config)
        x = x + _linear(attn, p.wo)
        h = _rms_norm(x, p.mlp_norm, config.norm_eps)
        gate, up = jnp.split(_linear(h, p.w_gate_up), 2, axis=-1)
        x = x + _linear(jax.nn.silu(gate) * up, p.w_down)
        return (x, k_cache, v_cache), None

    layer_ids = jnp.arange(config.n_layers, dtype=jnp.int32)
    (x, k_cache, v_cache), _ = jax.lax.scan(layer, (x, cache.k, cache.v), (layer_ids, params.layers))
    return _rms_norm(x[:, -1], params.final_norm, config.norm_eps), KVCache(k_cache, v_cache)


def unembed(params: LlamaParams, hidden: jax.Array) -> jax.Array:
    """Next-token logits ``[B, V]`` (float32) from final hidden states ``[B, D]``."""
    weight = params.embed if params.output is None else params.output
    return jnp.einsum("bd,vd->bv", hidden, weight, preferred_element_type=jnp.float32)
