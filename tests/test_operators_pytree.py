"""Operators and EmberModels are JAX pytrees: arrays are leaves, everything else static."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ember.api import non
from ember.api.operators import EmberModel, Operator, Specification
from ember.operators import LMModule, Router, Sequential


class XIn(EmberModel):
    x: jax.Array


class YOut(EmberModel):
    y: jax.Array


class Affine(Operator[XIn, YOut]):
    specification = Specification(input_model=XIn, structured_output=YOut)
    w: jax.Array
    b: jax.Array
    activation: str = "relu"

    def forward(self, *, inputs: XIn) -> YOut:
        y = inputs.x @ self.w + self.b
        return YOut(y=jax.nn.relu(y) if self.activation == "relu" else y)


class Stack(Operator):
    def __init__(self, layers):
        self.layers = list(layers)
        self.name = "stack"

    def forward(self, *, inputs):
        x = inputs.x
        for layer in self.layers:
            x = layer(x=x).y
        return YOut(y=x)


def affine(key, n_in, n_out, activation="relu"):
    return Affine(w=jax.random.normal(key, (n_in, n_out)), b=jnp.zeros(n_out), activation=activation)


def test_round_trip_keeps_leaves_static_fields_and_class():
    op = affine(jax.random.key(0), 3, 2, activation="linear")
    leaves, treedef = jax.tree_util.tree_flatten(op)
    assert len(leaves) == 2 and all(isinstance(leaf, jax.Array) for leaf in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is Affine and rebuilt.activation == "linear" and rebuilt.w is op.w
    assert jax.tree_util.tree_structure(rebuilt) == treedef
    x = jnp.ones(3)
    np.testing.assert_allclose(rebuilt(x=x).y, op(x=x).y)


def test_static_fields_are_part_of_the_treedef():
    key = jax.random.key(0)
    assert jax.tree_util.tree_structure(affine(key, 3, 2)) == jax.tree_util.tree_structure(affine(key, 3, 2))
    assert jax.tree_util.tree_structure(affine(key, 3, 2)) != jax.tree_util.tree_structure(
        affine(key, 3, 2, activation="linear")
    )


def test_tree_util_works_over_nested_operators():
    keys = jax.random.split(jax.random.key(1), 2)
    net = Stack([affine(keys[0], 4, 3), affine(keys[1], 3, 2)])
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(net)[0]]
    assert paths == [".layers[0].w", ".layers[0].b", ".layers[1].w", ".layers[1].b"]
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, net)
    assert isinstance(doubled, Stack) and doubled.name == "stack"
    np.testing.assert_allclose(doubled.layers[1].w, 2 * net.layers[1].w)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, net)
    assert float(jnp.abs(zeros(x=jnp.ones(4)).y).sum()) == 0.0


def test_llm_operators_are_all_static_and_mix_with_array_operators():
    pipeline = Sequential(
        [
            non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o"),
            Router(
                routes={"vote": non.WeightedVote.uniform(3), "judge": non.JudgeSynthesis("openai:gpt-4o")},
                selector=lambda inputs: "vote",
            ),
        ]
    )
    leaves, treedef = jax.tree_util.tree_flatten(pipeline)
    assert len(leaves) == 1 and leaves[0].shape == (3,)  # only the vote's logits
    assert jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(pipeline)[0][0][0]) == (
        ".operators[1].routes['vote'].logits"
    )
    rebuilt = jax.tree_util.tree_unflatten(treedef, [jnp.ones(3)])
    assert rebuilt.operators[0].lm_modules[0] == LMModule("openai:gpt-4o", 0.7)
    assert rebuilt.operators[1].routes["judge"].model_name == "openai:gpt-4o"
    assert rebuilt.operators[1].routes["vote"].logits.tolist() == [1.0, 1.0, 1.0]


def test_unhashable_static_values_still_give_a_usable_treedef():
    class Tagged(Operator):
        tags: list
        w: jax.Array

        def forward(self, *, inputs):
            return self.w

    a, b = Tagged(tags=["x", "y"], w=jnp.ones(1)), Tagged(tags=["x", "y"], w=jnp.zeros(1))
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert hash(jax.tree_util.tree_structure(a)) == hash(jax.tree_util.tree_structure(b))
    assert jax.jit(lambda op: op.w + 1)(a).tolist() == [2.0]


def test_jit_over_an_array_operator_traces_once_per_structure():
    traces = []

    def apply(op, x):
        traces.append(None)
        return op(x=x).y

    op = affine(jax.random.key(2), 3, 2)
    fast = jax.jit(apply)
    x = jnp.arange(3.0)
    np.testing.assert_allclose(fast(op, x), op(x=x).y, rtol=1e-6)
    fast(jax.tree_util.tree_map(lambda a: a + 1, op), x)  # new values, same structure
    assert len(traces) == 1
    fast(affine(jax.random.key(2), 3, 2, activation="linear"), x)  # new static field
    assert len(traces) == 2


def test_jit_of_the_operator_itself_returns_its_output_model():
    op = affine(jax.random.key(3), 3, 2, activation="linear")
    out = jax.jit(op)(inputs={"x": jnp.ones(3)})
    assert isinstance(out, YOut)
    np.testing.assert_allclose(out.y, op(x=jnp.ones(3)).y, rtol=1e-6)


def test_grad_with_respect_to_an_operator_is_an_operator():
    op = affine(jax.random.key(4), 3, 1, activation="linear")
    grads = jax.grad(lambda op: op(x=jnp.ones(3)).y.sum())(op)
    assert isinstance(grads, Affine)
    np.testing.assert_allclose(grads.w, jnp.ones((3, 1)))
    np.testing.assert_allclose(grads.b, jnp.ones(1))


def test_vmap_over_a_batch_of_inputs():
    op = affine(jax.random.key(5), 3, 2, activation="linear")
    batch = jax.vmap(lambda x: op(x=x).y)(jnp.ones((4, 3)))
    assert batch.shape == (4, 2)


def test_ember_models_are_pytrees_too():
    class Pair(EmberModel):
        label: str
        value: jax.Array

    pair = Pair(label="a", value=jnp.ones(2))
    leaves, treedef = jax.tree_util.tree_flatten(pair)
    assert leaves[0] == "a" and leaves[1].shape == (2,)
    assert jax.tree_util.tree_unflatten(treedef, ["b", jnp.zeros(2)]).label == "b"


@pytest.mark.parametrize("field_value", [None, "text", 3.0, (1, 2)])
def test_non_array_values_are_static(field_value):
    class Holder(Operator):
        value: object

        def forward(self, *, inputs):
            return self.value

    assert jax.tree_util.tree_leaves(Holder(value=field_value)) == []
