"""WeightedVote: learnable per-member logits, trained with optax on recorded answers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ember.api import non
from ember.operators import InvalidInputError, majority_vote, normalize_answer

CHOICES = ["A", "B", "C", "D"]
RELIABILITY = [0.8, 0.45, 0.4, 0.35, 0.35]  # one good member, four weak ones


def synthetic(rng, items):
    """Each item has a random right choice; member i is right with RELIABILITY[i], else picks a wrong choice.

    Weak members are wrong in the same way (biased towards one distractor), as models that
    share a misconception are.
    """
    labels, answers = [], []
    for _ in range(items):
        right = rng.integers(4)
        decoy = (right + 1 + rng.integers(3)) % 4
        row = []
        for p in RELIABILITY:
            if rng.random() < p:
                row.append(CHOICES[right])
            else:
                row.append(CHOICES[decoy] if rng.random() < 0.7 else CHOICES[(decoy + 1 + rng.integers(2)) % 4])
        labels.append(CHOICES[right])
        answers.append([a.lower() + "." if rng.random() < 0.2 else a for a in row])  # surface noise
    return answers, labels


def accuracy(predict, answers, labels):
    return np.mean([normalize_answer(predict(row)) == normalize_answer(label) for row, label in zip(answers, labels)])


def test_fitted_weights_beat_plain_majority_vote_on_held_out_items():
    rng = np.random.default_rng(0)
    train_answers, train_labels = synthetic(rng, 300)
    test_answers, test_labels = synthetic(rng, 2000)
    vote = non.WeightedVote.uniform(len(RELIABILITY)).fit(train_answers, train_labels)
    weights = np.asarray(vote.weights)
    assert weights.argmax() == 0 and weights[0] > 0.5
    learned = accuracy(lambda row: vote(responses=row).final_answer, test_answers, test_labels)
    majority = accuracy(majority_vote, test_answers, test_labels)
    assert learned > majority + 0.05, (learned, majority)


def test_uniform_weights_vote_like_most_common():
    vote = non.WeightedVote.uniform(4)
    rows = [["a", "b", "b", "a"], ["x", "Y", "y.", "z"], ["1", "2", "3", "4"]]
    assert [vote(responses=row).final_answer for row in rows] == [majority_vote(row) for row in rows]
    assert vote(responses=["a", "b", "b", "c"]).confidence == pytest.approx(0.5)
    with pytest.raises(InvalidInputError, match="4 members but got 2"):
        vote(responses=["a", "b"])


def test_training_is_jax_over_the_operator_pytree():
    vote = non.WeightedVote.uniform(3)
    assert jax.tree_util.tree_leaves(vote)[0].shape == (3,)
    answers, labels = [["a", "b", "b"]] * 4, ["a"] * 4
    fitted = vote.fit(answers, labels, steps=50, optimizer=optax.sgd(1.0))
    assert isinstance(fitted, non.WeightedVote) and vote.logits.tolist() == [0.0, 0.0, 0.0]  # original untouched
    assert fitted(responses=["a", "b", "b"]).final_answer == "a"
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, fitted)
    np.testing.assert_allclose(doubled.logits, 2 * fitted.logits)
    with pytest.raises(ValueError, match="one label per item"):
        vote.fit(answers, labels[:2])
    with pytest.raises(ValueError, match="3 answers"):
        vote.fit([["a"]], ["a"])


def test_explicit_logits():
    vote = non.WeightedVote(logits=jnp.array([2.0, 0.0, 0.0]))
    assert vote(responses=["B", "A", "A"]).final_answer == "B"
