"""Sampling and shape buckets of the local model, on synthetic logits (no model needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ember.local import GenerationConfig, InvalidGenerationConfigError, _generate
from ember.local._sampling import _draw, _filter, argmax, seed_words


def _sorted_filter(logits: np.ndarray, top_k: np.ndarray, top_p: np.ndarray) -> np.ndarray:
    """Which tokens survive top-k then top-p, by sorting (the textbook way), float64."""
    keep = np.zeros(logits.shape, bool)
    for i, row in enumerate(logits.astype(np.float64)):
        row = row.copy()
        if top_k[i] > 0:
            row[row < np.sort(row)[::-1][top_k[i] - 1]] = -np.inf
        if top_p[i] < 1:
            ordered = np.sort(row)[::-1]
            probs = np.exp(ordered - ordered[0])
            probs /= probs.sum()
            n_keep = max(1, int(np.sum(np.cumsum(probs) - probs < top_p[i])))
            row[row < ordered[n_keep - 1]] = -np.inf
        keep[i] = np.isfinite(row)
    return keep


def test_filter_keeps_top_k_and_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 3))
    kept = np.isfinite(np.asarray(_filter(logits, jnp.asarray([2, 0, 0]), jnp.asarray([1.0, 0.7, 0.85]))))
    assert kept.tolist() == [[True, True, False, False], [True, True, False, False], [True, True, True, False]]


def test_filter_matches_sorting_on_both_fast_and_bisection_paths():
    rng = np.random.default_rng(0)
    scales = np.asarray([[0.1], [1.0], [3.0], [0.01], [1.0], [2.0]], np.float32)
    logits = rng.standard_normal((6, 3000)).astype(np.float32) * scales
    top_k = np.asarray([0, 5, 300, 0, 1000, 0])  # 300 and 1000 exceed the 256 candidates
    top_p = np.asarray([0.9, 1.0, 0.8, 0.999, 0.5, 0.3], np.float32)  # 0.9 and 0.999 of flat rows too
    got = np.isfinite(np.asarray(_filter(jnp.asarray(logits), jnp.asarray(top_k), jnp.asarray(top_p))))
    np.testing.assert_array_equal(got, _sorted_filter(logits, top_k, top_p))


def test_inverse_cdf_draw_follows_the_distribution():
    probs = np.asarray([0.5, 0.25, 0.125, 0.125] + [0.0] * 300)  # spans three blocks of 128
    logits = jnp.log(jnp.asarray(np.tile(probs, (8000, 1)), jnp.float32))
    draws = np.asarray(_draw(logits, jax.random.uniform(jax.random.key(1), (8000,))))
    assert draws.max() <= 3  # never a zero-probability token
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 8000, probs[:4], atol=0.02)


def test_argmax_is_the_first_maximum_with_nan_as_largest():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 49152)).astype(np.float32)
    logits[1, [5, 900]] = 40.0  # a tie: the first wins
    logits[2, [7, 11]] = [np.inf, np.nan]  # NaN counts as +inf: the first of them wins
    logits[3] = -np.inf  # nothing finite: index 0, as jnp.argmax
    logits[4, 3] = np.nan
    got = np.asarray(jax.jit(argmax)(jnp.asarray(logits)))
    assert got.dtype == np.int32
    assert got.tolist() == [int(np.argmax(logits[0])), 5, 7, 0, 3, int(np.argmax(logits[5]))]


def test_seed_words_cover_64_bits():
    assert seed_words(0) == (0, 0) and seed_words(2**32 + 5) == (5, 1) and seed_words(-1) == (2**32 - 1, 2**32 - 1)


def test_buckets_are_powers_of_two_and_mesh_multiples():
    assert [_generate.bucket(n) for n in (1, 2, 3, 5, 32, 33)] == [1, 2, 4, 8, 32, 64]
    assert _generate.bucket(3, 16) == 16 and _generate.bucket(3, multiple=8) == 8 and _generate.bucket(12, multiple=8) == 16
    assert [_generate.prompt_bucket(n) for n in (1, 17, 25, 33, 49, 65, 97)] == [16, 24, 32, 48, 64, 96, 128]


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"), ({"top_k": -1}, "top_k"),
     ({"top_p": 0.0}, "top_p"), ({"stop": ("",)}, "stop")],
)
def test_out_of_range_settings_are_typed_errors(setting, message):
    with pytest.raises(InvalidGenerationConfigError, match=message) as err:
        GenerationConfig(**setting)
    assert isinstance(err.value, ValueError)  # still a bad argument to code that catches ValueError
