"""Weight precisions of the embedded model: float32, bfloat16, and int8 weight-only in blocks of 32.

int8 keeps each projection matrix ``(out, in)`` as int8 ``q`` with, per block of 32 inputs, a
``scale`` and ``offset``: ``w = q * scale + offset``, float16 where the file stores them so
(Q4_1, Q8_0), else float32. That is the layout of GGUF's
32-wide block quantizations, so it holds the file's own integers: a Q4_1 tensor (``d * q + m``,
``q`` in 0..15) and a Q8_0 one (``d * q``) load exactly, and a matrix stored any other way
(F16, F32, k-quants) stays in the compute dtype. So int8 never changes a weight: SmolLM2's file
is Q4_1 throughout, its int8 weights are its float32 weights, and its logits are float32's, bit
for bit, while a decode step reads 1.125 bytes a weight instead of 4. (The per-output-row int8
this replaced requantized every matrix and changed a greedy answer of SmolLM2.)

XLA:CPU does not fuse a convert into a dot, so :func:`linear` dequantizes the matrix to the
compute dtype (one elementwise pass: 1.125 bytes a weight read, the float copy written to cache)
and then multiplies. Inside the layer ``lax.scan`` only one layer's float copy exists at a time.
Splitting each matrix into output tiles so that each float copy stays in L2 (512 KB or 2 MB
tiles) made a decode step slower at batch 1 and 8 (11.5 and 10.5 ms against 9.4 at batch 1):
the extra ops cost more than the cache misses they saved.
Measured alternatives (SmolLM2's 30 layers of projections at batch 1 on the 2-core CPU, time
relative to float32 weights): dequantize then dot 0.55x; a batched dot over the blocks then a
scaled sum 2.6x; a multiply-and-reduce that XLA fuses with the convert 13x; packed nibbles (0.5
bytes a weight) 3.9x, as unpacking breaks the fusion. Embeddings (also the tied output
projection), norms and the KV cache stay in the compute dtype: the gather reads a few rows, and
the float32 output projection, one large contiguous matmul, took 3.1 ms at batch 1 against 3.2
ms dequantized in vocabulary chunks (48 ms dequantized whole).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ember.local._gguf import GGUFContents

__all__ = ["BLOCK", "PRECISIONS", "Precision", "QuantizedWeight", "dequantize", "linear", "quantize_blocks", "quantize_tensor"]

Precision = Literal["float32", "bfloat16", "int8"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "int8")

#: Inputs sharing one scale and offset (GGUF's Q4_0/Q4_1/Q8_0 block size).
BLOCK = 32

Blocks = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(q int8 [..., out, in], scale [..., out, in/32], offset [..., out, in/32])``, the scale and
offset float16 or float32."""


class QuantizedWeight(NamedTuple):
    """``w[..., o, i] = q[..., o, i] * scale[..., o, i // 32] + offset[..., o, i // 32]``."""

    q: jax.Array
    scale: jax.Array
    offset: jax.Array


def quantize_blocks(w: np.ndarray) -> Blocks:
    """Symmetric int8 of ``w [..., out, in]`` with one scale per 32 inputs, offset 0."""
    w = np.asarray(w, np.float32)
    if w.shape[-1] % BLOCK:
        raise ValueError(f"int8 weights need an input dimension divisible by {BLOCK}, not {w.shape[-1]}")
    blocks = w.reshape(*w.shape[:-1], -1, BLOCK)
    amax = np.max(np.abs(blocks), axis=-1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale, np.zeros_like(scale)


def _q4_1_blocks(raw: np.ndarray) -> Blocks:
    """A Q4_1 tensor's own integers from its bytes ``[rows, n * 20]``: per block an f16 ``d``,
    an f16 ``m``, then 16 bytes whose low nibbles are inputs 0..15 and high nibbles 16..31."""
    blocks = np.asarray(raw, np.uint8).reshape(raw.shape[0], -1, 4 + BLOCK // 2)
    d_m = np.ascontiguousarray(blocks[..., :4]).view(np.float16)
    nibbles = blocks[..., 4:]
    q = np.concatenate([nibbles & 15, nibbles >> 4], axis=-1).astype(np.int8)
    return q.reshape(raw.shape[0], -1), d_m[..., 0], d_m[..., 1]  # float16, as stored


def quantize_tensor(contents: GGUFContents, name: str) -> Blocks | None:
    """The GGUF tensor ``name`` as int8 blocks holding exactly its float32 values, or ``None``
    where they cannot: a Q4_1 tensor's own integers; else :func:`quantize_blocks` of its values
    when that reproduces them (Q8_0 does, bit for bit; F16, F32 and k-quants do not)."""
    if contents.stored_types[name] == "Q4_1":
        return _q4_1_blocks(contents.raw[name])
    values = contents.tensors[name]
    if values.shape[-1] % BLOCK:
        return None
    q, scale, offset = quantize_blocks(values)
    exact = np.array_equal(q.reshape(*scale.shape, BLOCK) * scale[..., None], values.reshape(*scale.shape, BLOCK))
    if not exact:
        return None
    if np.array_equal(scale.astype(np.float16).astype(np.float32), scale):  # Q8_0's f16 scales
        scale, offset = scale.astype(np.float16), offset.astype(np.float16)
    return q, scale, offset


def dequantize(w: QuantizedWeight, dtype: Any = jnp.float32) -> jax.Array:
    """The float weight ``[..., out, in]``. In float32 it equals the file reader's dequantized
    values: a Q4_1 or Q8_0 ``q * scale`` (f16 scale, <= 8-bit ``q``) is exact, so adding the
    offset rounds once, fused into a multiply-add or not."""
    q = w.q.reshape(*w.q.shape[:-1], -1, BLOCK).astype(jnp.float32)
    scale, offset = w.scale.astype(jnp.float32)[..., None], w.offset.astype(jnp.float32)[..., None]
    return (q * scale + offset).reshape(w.q.shape).astype(dtype)


def linear(x: jax.Array, w: jax.Array | QuantizedWeight) -> jax.Array:
    """``x @ w.T`` for a weight stored ``(out, in)``, plain or :class:`QuantizedWeight` (then
    dequantized to ``x``'s dtype first: see the module docstring for why)."""
    if isinstance(w, QuantizedWeight):
        w = dequantize(w, x.dtype)
    return jnp.einsum("...i,oi->...o", x, w)
