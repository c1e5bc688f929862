"""The calls-count estimator (after Chen et al., 2024) on items with known accuracies."""

from math import comb

import numpy as np
import pytest

from ember.api import non


def exact_vote_accuracy(p: float, k: int) -> float:
    """Majority of k calls right, ties counted one half -- written out independently."""
    win = sum(comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(k // 2 + 1, k + 1))
    tie = comb(k, k // 2) * (p * (1 - p)) ** (k // 2) if k % 2 == 0 else 0.0
    return win + tie / 2


def true_best(p: np.ndarray, max_calls: int) -> tuple[int, list[float]]:
    curve = [float(np.mean([exact_vote_accuracy(q, k) for q in p])) for k in range(1, max_calls + 1)]
    best = max(curve)
    return next(k for k, a in enumerate(curve, 1) if a >= best - 1e-12), curve


def test_vote_accuracy_matches_the_binomial_formula():
    p = np.array([0.1, 0.5, 0.6, 0.95])
    table = non.vote_accuracy(p, np.arange(1, 12))
    expected = [[exact_vote_accuracy(q, k) for k in range(1, 12)] for q in p]
    np.testing.assert_allclose(table, expected, rtol=1e-10)


@pytest.mark.parametrize(
    ("easy_share", "easy", "hard", "seed"),
    [(0.6, 0.8, 0.35, 0), (0.5, 0.8, 0.4, 1), (0.55, 0.85, 0.4, 2), (0.45, 0.9, 0.4, 3)],
)
def test_best_number_of_calls_is_within_two_of_the_true_best(easy_share, easy, hard, seed):
    rng = np.random.default_rng(seed)
    items, samples, max_calls = 400, 20, 40
    # Known per-item accuracies: a mix of easy and hard items, spread around two levels.
    p = np.where(rng.random(items) < easy_share, easy, hard) + rng.uniform(-0.05, 0.05, items)
    best, curve = true_best(p, max_calls)
    assert 1 < best < max_calls and curve[best - 1] > curve[-1] + 0.01  # a real inverted U
    estimate = non.estimate_num_calls(rng.random((items, samples)) < p[:, None], max_calls=max_calls)
    assert abs(estimate.best_num_calls - best) <= 2, (estimate.best_num_calls, best)
    # Not monotone: the prediction rises, peaks at the estimate, then falls.
    assert estimate.accuracy[estimate.best_num_calls - 1] > max(estimate.accuracy[0], estimate.accuracy[-1])
    assert abs(float(np.mean(estimate.item_accuracy)) - float(np.mean(p))) < 0.03


def test_all_easy_or_all_hard_items_give_the_extremes():
    rng = np.random.default_rng(4)
    easy = non.estimate_num_calls(rng.random((200, 10)) < 0.85, max_calls=15)
    hard = non.estimate_num_calls(rng.random((200, 10)) < 0.2, max_calls=15)
    assert easy.best_num_calls >= 13 and hard.best_num_calls == 1
    assert np.all(np.diff(hard.accuracy[::2]) < 0)  # more calls only hurt (odd counts)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"\[items, samples\]"):
        non.estimate_num_calls(np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="max_calls"):
        non.estimate_num_calls(np.ones((2, 2), dtype=bool), max_calls=0)
