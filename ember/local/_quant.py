"""Weight precisions of the embedded model: float32, bfloat16, and int8 weight-only.

int8 keeps each projection matrix ``(out, in)`` as int8 with one symmetric float32 scale per
output channel (``scale = max|w| / 127`` over the row), and multiplies as
``(x @ q.astype(compute).T) * scale``: the convert sits next to the dot so XLA can fuse it
into the matmul (it does on GPU; on CPU it is a separate pass, see ``docs/local-model.md``).
Embeddings (also the tied output projection), norms and the KV cache stay in the compute
dtype; activations are never quantized.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PRECISIONS", "Precision", "QuantizedWeight", "dequantize", "linear", "quantize_int8"]

Precision = Literal["float32", "bfloat16", "int8"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "int8")


class QuantizedWeight(NamedTuple):
    """An int8 weight ``q [..., out, in]`` and its per-output-channel scales ``[..., out]``."""

    q: jax.Array
    scale: jax.Array


def quantize_int8(w: np.ndarray) -> QuantizedWeight:
    """Symmetric per-output-channel int8 of ``w [..., out, in]`` (the last axis is reduced)."""
    w = np.asarray(w, np.float32)
    amax = np.max(np.abs(w), axis=-1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[..., None]), -127, 127).astype(np.int8)
    return QuantizedWeight(jnp.asarray(q), jnp.asarray(scale))


def dequantize(w: QuantizedWeight, dtype: Any = jnp.float32) -> jax.Array:
    return (w.q.astype(jnp.float32) * w.scale[..., None]).astype(dtype)


def linear(x: jax.Array, w: jax.Array | QuantizedWeight) -> jax.Array:
    """``x @ w.T`` for a weight stored ``(out, in)``, plain or :class:`QuantizedWeight`."""
    if isinstance(w, QuantizedWeight):
        y = jnp.einsum("...i,oi->...o", x, w.q.astype(x.dtype))
        return y * w.scale.astype(x.dtype)
    return jnp.einsum("...i,oi->...o", x, w)
