"""Per-row sampling: temperature, top-k, top-p and a seed per row, inside the jitted loop.

Every row draws with its own key, ``fold_in(fold_in(key(seed_lo), seed_hi), n)`` where
``n`` counts the tokens the row has generated. A row's draws therefore depend only on its
seed and its own logits, never on which other requests share the batch or on its row
index, so a seeded request gives the same text alone or micro-batched with others.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["SamplingParams", "sample", "seed_words"]


class SamplingParams(NamedTuple):
    """Per-row sampling settings, arrays of leading size B."""

    temperature: jax.Array  # f32; 0 means greedy
    top_k: jax.Array  # i32; 0 means off
    top_p: jax.Array  # f32; 1 means off
    seed: jax.Array  # u32 [B, 2]: low and high 32 bits of the row's seed
    max_new: jax.Array  # i32: tokens to generate at most
    use_eos: jax.Array  # bool: stop at end-of-turn tokens


def seed_words(seed: int) -> tuple[int, int]:
    """A non-negative 64-bit seed as two uint32 words (Python ints of any size are reduced mod 2**64)."""
    seed %= 1 << 64
    return seed & 0xFFFFFFFF, seed >> 32


def _filter(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask logits outside each row's top-k set and top-p nucleus (ties at the edge are kept)."""
    vocab = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)  # descending
    kth = jnp.take_along_axis(ordered, jnp.clip(top_k - 1, 0, vocab - 1)[:, None], axis=-1)
    kth = jnp.where(top_k[:, None] > 0, kth, -jnp.inf)
    ordered = jnp.where(ordered >= kth, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.maximum(jnp.sum(mass_before < top_p[:, None], axis=-1), 1)
    pth = jnp.take_along_axis(ordered, (n_keep - 1)[:, None], axis=-1)
    return jnp.where(logits >= jnp.maximum(kth, pth), logits, -jnp.inf)


def sample(logits: jax.Array, params: SamplingParams, generated: jax.Array, *, filtering: bool) -> jax.Array:
    """Next token per row of ``logits [B, V]``: argmax where temperature is 0, else a draw.

    ``filtering`` is static: the full-vocabulary sort that top-k/top-p need is compiled in
    only when some row asks for it.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(params.temperature, 1e-6)[:, None]
    if filtering:
        scaled = _filter(scaled, params.top_k, params.top_p)

    def draw(words: jax.Array, n: jax.Array, row: jax.Array) -> jax.Array:
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(words[0]), words[1]), n)
        return jax.random.categorical(key, row)

    drawn = jax.vmap(draw)(params.seed, generated, scaled).astype(jnp.int32)
    return jnp.where(params.temperature > 0, drawn, greedy)

