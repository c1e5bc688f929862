"""WeightedVote: a vote whose per-member weights are learned -- an operator with parameters.

Plain majority vote trusts every member equally. When members differ in reliability
(a strong and a weak model, or one prompt that works and one that does not), weighting
them helps, and the weights can be learned from a labelled set of the members' recorded
answers. Because operators are pytrees, this is ordinary JAX training: the logits are a
``jax.Array`` field, ``jax.grad`` of a loss *of the operator* returns an operator-shaped
gradient, and optax updates the operator itself. No gradient ever flows through an LLM
call: the members' answers are data, and the gradient flows through the vote distribution

    p(answer a) = sum_i softmax(logits)_i * [member i answered a]

trained to put mass on the labelled answer (negative log-likelihood).

>>> import jax.numpy as jnp
>>> vote = WeightedVote(logits=jnp.array([2.0, 0.0, 0.0]))
>>> vote(responses=["B", "A", "A"]).final_answer   # member 0 outweighs the other two
'B'
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ember.operators import (
    EmberModel,
    InvalidInputError,
    MostCommonInput,
    Operator,
    Specification,
    normalize_answer,
    register_operator,
)

__all__ = ["WeightedVote", "WeightedVoteOutput"]


class WeightedVoteOutput(EmberModel):
    final_answer: str
    confidence: float  # vote mass of the winning answer, in [0, 1]


class WeightedVoteSpecification(Specification[MostCommonInput, WeightedVoteOutput]):
    input_model = MostCommonInput
    structured_output = WeightedVoteOutput


def _agreement(answers: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """``[item, member]`` is 1 where member's answer to item matches the item's target."""
    target_keys = [normalize_answer(t) for t in targets]
    return np.array(
        [[normalize_answer(a) == key for a in row] for row, key in zip(answers, target_keys)], dtype=np.float32
    )


def _nll(vote: WeightedVote, agreement: jax.Array) -> jax.Array:
    mass = agreement @ jax.nn.softmax(vote.logits)
    return -jnp.mean(jnp.log(mass + 1e-6))


@register_operator
class WeightedVote(Operator[MostCommonInput, WeightedVoteOutput]):
    """Vote over ``responses`` (one per member, in member order) with learned weights.

    Ties go to the answer that appears first, as in :class:`~ember.operators.MostCommon`.
    """

    specification = WeightedVoteSpecification()
    logits: jax.Array

    @classmethod
    def uniform(cls, num_members: int) -> WeightedVote:
        """Equal weights: plain majority vote until fitted."""
        return cls(logits=jnp.zeros(num_members))

    @property
    def weights(self) -> jax.Array:
        return jax.nn.softmax(self.logits)

    def forward(self, *, inputs: MostCommonInput) -> WeightedVoteOutput:
        responses = inputs.responses
        if len(responses) != self.logits.shape[0]:
            raise InvalidInputError(
                f"WeightedVote has {self.logits.shape[0]} members but got {len(responses)} responses"
            )
        weights = np.asarray(self.weights)
        mass: dict[str, float] = {}
        first: dict[str, int] = {}
        for i, response in enumerate(responses):
            key = normalize_answer(response)
            mass[key] = mass.get(key, 0.0) + float(weights[i])
            first.setdefault(key, i)
        winner = max(mass, key=lambda key: (mass[key], -first[key]))
        return WeightedVoteOutput(final_answer=responses[first[winner]].strip(), confidence=mass[winner])

    def fit(
        self,
        answers: Sequence[Sequence[str]],
        labels: Sequence[str],
        *,
        steps: int = 500,
        optimizer: optax.GradientTransformation | None = None,
    ) -> WeightedVote:
        """A copy with logits fitted to ``answers[item][member]`` and the items' ``labels``.

        Items no member got right carry no signal about weights and simply add a constant.
        """
        if len(answers) != len(labels) or not answers:
            raise ValueError(f"need one label per item, got {len(answers)} items and {len(labels)} labels")
        members = self.logits.shape[0]
        if any(len(row) != members for row in answers):
            raise ValueError(f"every item needs {members} answers, one per member")
        agreement = jnp.asarray(_agreement(answers, labels))
        optimizer = optimizer or optax.adam(0.05)

        @jax.jit
        def train(vote: WeightedVote) -> WeightedVote:
            def step(carry, _):
                vote, state = carry
                grads = jax.grad(_nll)(vote, agreement)  # a WeightedVote holding d loss / d logits
                updates, state = optimizer.update(grads, state, vote)
                return (optax.apply_updates(vote, updates), state), None

            (vote, _), _ = jax.lax.scan(step, (vote, optimizer.init(vote)), length=steps)
            return vote

        return train(self)
