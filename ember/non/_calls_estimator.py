"""How many calls should a Vote make? An estimator after Chen et al. (2024).

"Are More LLM Calls All You Need?" shows that majority-vote accuracy is not monotone in
the number of calls K: on an item the model answers correctly with probability p > 1/2,
more votes push accuracy towards 1; with p < 1/2 they push it towards 0. A mix of easy
and hard items therefore gives an inverted U, and the best K depends on the mix.

The estimator needs only a few labelled samples per item:

1. *Difficulty.* Item i's single-call accuracy p_i is unknown; its c_i correct answers out
   of m samples are Binomial(m, p_i). The population of p's is estimated on a grid by
   nonparametric maximum likelihood (EM over the grid weights) -- no assumed shape, and
   Chen et al.'s two-level "easy/hard" model is a special case. Each item's posterior over
   the grid is its estimated difficulty.
2. *Accuracy vs K.* Vote with K calls is right on an item when more than K/2 calls are
   right, and half the time on a tie (first-seen tie-breaking between exchangeable
   samples). Averaging that over each item's posterior predicts accuracy for every K.
3. *Best K.* The smallest K with the highest predicted accuracy.

It treats every wrong answer as the same wrong answer, the worst case for a vote; when
wrong answers scatter, real Vote accuracy is at least this high.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> p = np.where(rng.random(400) < 0.6, 0.8, 0.35)        # 60% easy items, 40% hard
>>> samples = rng.random((400, 20)) < p[:, None]         # 20 labelled samples per item
>>> estimate = estimate_num_calls(samples, max_calls=40)
>>> estimate.best_num_calls
5
>>> estimate.accuracy[[0, 4, 39]].round(3)                # 1, 5 and 40 calls: an inverted U
array([0.605, 0.633, 0.571])
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["CallsEstimate", "estimate_num_calls", "vote_accuracy"]


@dataclasses.dataclass(frozen=True)
class CallsEstimate:
    """The predicted accuracy of Vote for ``num_calls = 1..max_calls``, and the best count."""

    best_num_calls: int
    num_calls: np.ndarray  # 1, 2, ..., max_calls
    accuracy: np.ndarray  # predicted Vote accuracy at each count
    item_accuracy: np.ndarray  # each item's estimated single-call accuracy (posterior mean)


def vote_accuracy(p: ArrayLike, num_calls: ArrayLike) -> np.ndarray:
    """Accuracy of majority vote with ``num_calls`` calls on items of single-call accuracy ``p``.

    Returns shape ``p.shape + num_calls.shape``; a tie counts one half.

    >>> vote_accuracy([0.6], [1, 3]).round(3)
    array([[0.6  , 0.648]])
    """
    p = np.asarray(p, dtype=np.float64)[..., None, None]
    k = np.asarray(num_calls)[:, None]
    j = np.arange(int(k.max()) + 1)  # number of right calls
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, k.max() + 1)))])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = (
            log_fact[k] - log_fact[j] - log_fact[np.clip(k - j, 0, None)]
            + np.where(j > 0, j * np.log(p), 0.0)
            + np.where(k - j > 0, (k - j) * np.log1p(-p), 0.0)
        )
    pmf = np.where(j <= k, np.exp(log_pmf), 0.0)
    credit = np.where(2 * j > k, 1.0, np.where(2 * j == k, 0.5, 0.0))
    return (pmf * credit).sum(axis=-1)


def estimate_num_calls(
    correct: ArrayLike, *, max_calls: int = 64, grid_size: int = 99, max_iterations: int = 2000
) -> CallsEstimate:
    """Estimate the best number of Vote calls from ``correct[item, sample]`` (booleans).

    A few samples per item (10-20) over a few hundred items is typical; more samples
    sharpen each item's difficulty, more items sharpen the population.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or correct.size == 0:
        raise ValueError(f"correct must be a non-empty [items, samples] array, got shape {correct.shape}")
    if max_calls < 1:
        raise ValueError(f"max_calls must be at least 1, got {max_calls}")
    hits, samples = correct.sum(axis=1), correct.shape[1]
    grid = (np.arange(grid_size) + 0.5) / grid_size
    # Binomial likelihood of each item's hits at each grid point (the n-choose-k factor cancels).
    log_lik = hits[:, None] * np.log(grid) + (samples - hits)[:, None] * np.log1p(-grid)
    lik = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    weights = np.full(grid_size, 1.0 / grid_size)
    for _ in range(max_iterations):
        posterior = _normalize(lik * weights)
        updated = posterior.mean(axis=0)
        done = np.abs(updated - weights).max() < 1e-10
        weights = updated
        if done:
            break
    posterior = _normalize(lik * weights)
    num_calls = np.arange(1, max_calls + 1)
    accuracy = (posterior @ vote_accuracy(grid, num_calls)).mean(axis=0)
    best = int(num_calls[np.flatnonzero(accuracy >= accuracy.max() - 1e-12)[0]])
    return CallsEstimate(best, num_calls, accuracy, posterior @ grid)


def _normalize(rows: np.ndarray) -> np.ndarray:
    return rows / rows.sum(axis=1, keepdims=True)
