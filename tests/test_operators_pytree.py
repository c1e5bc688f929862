"""Operators and EmberModels are JAX pytrees: declared array and operator fields are children,
everything else static."""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ember.api import non
from ember.api.operators import EmberModel, Operator, Specification, combine, field, is_array, partition
from ember.operators import LMModule, Router, Sequential
from tests.helpers import XIn, YOut


class Affine(Operator[XIn, YOut]):
    specification = Specification(input_model=XIn, structured_output=YOut)
    w: jax.Array
    b: jax.Array
    activation: str = "relu"

    def forward(self, *, inputs: XIn) -> YOut:
        y = inputs.x @ self.w + self.b
        return YOut(y=jax.nn.relu(y) if self.activation == "relu" else y)


class Stack(Operator):
    layers: list[Affine]
    name: str

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


# -- declared, not guessed: the class decides which fields are children -----------------


class MaybeBiased(Operator):
    w: jax.Array
    b: Optional[jax.Array] = None  # noqa: UP045  (typing.Optional must work too)

    def forward(self, *, inputs):
        return inputs.x * self.w + (0.0 if self.b is None else self.b)


def _structure_with_none(tree):
    return jax.tree_util.tree_structure(tree, is_leaf=lambda x: x is None)


def test_none_then_array_keeps_the_same_children():
    unbiased, biased = MaybeBiased(w=jnp.ones(2)), MaybeBiased(w=jnp.ones(2), b=jnp.zeros(2))
    assert _structure_with_none(unbiased) == _structure_with_none(biased)  # b is a child in both
    assert len(jax.tree_util.tree_leaves(unbiased)) == 1 and len(jax.tree_util.tree_leaves(biased)) == 2
    filled = jax.tree_util.tree_unflatten(_structure_with_none(unbiased), [jnp.ones(2), jnp.full(2, 5.0)])
    assert filled.b.tolist() == [5.0, 5.0]


def test_treedef_depends_on_the_class_not_the_array_values():
    a, b = MaybeBiased(w=jnp.ones(2), b=jnp.ones(2)), MaybeBiased(w=jnp.zeros(3), b=np.arange(3.0))
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


class Masked(Operator):
    w: jax.Array
    mask: jax.Array = field(static=True)

    def forward(self, *, inputs):
        return inputs.x * self.w * self.mask


def test_static_field_array_is_a_constant_to_jax():
    op = Masked(w=jnp.ones(3), mask=np.array([1.0, 0.0, 1.0]))
    assert [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(op)[0]] == [".w"]
    seen = []

    def apply(op, x):
        seen.append(isinstance(op.mask, jax.core.Tracer))
        return op(x=x)

    assert jax.jit(apply)(op, jnp.ones(3)).tolist() == [1.0, 0.0, 1.0]
    assert seen == [False]  # traced w, but the mask stayed a concrete constant
    grads = jax.grad(lambda op: op(x=jnp.ones(3)).sum())(op)
    assert grads.w.tolist() == [1.0, 0.0, 1.0] and grads.mask is op.mask


class Opaque(Operator):
    inner: Any = field(static=False)

    def forward(self, *, inputs):
        return self.inner


def test_field_static_false_makes_any_annotation_a_child():
    assert len(jax.tree_util.tree_leaves(Opaque(inner={"a": jnp.ones(1), "b": jnp.ones(2)}))) == 2


class FakeService:
    """A host-side object, like a ModelService: unhashable, never traced."""

    __hash__ = None

    def complete(self, text):
        return text.upper()


class Hybrid(Operator):
    """Strings, an LM, a service, sub-operators and an array, in one operator."""

    prompt: str
    lm: LMModule
    service: FakeService
    layers: list[Affine]
    head: "Head"  # a forward reference: Head is defined below
    scale: jax.Array

    def forward(self, *, inputs):
        x = inputs.x
        for layer in self.layers:
            x = layer(x=x).y
        return self.scale * self.head(x=x)


class Head(Operator):
    v: jax.Array

    def forward(self, *, inputs):
        return inputs.x @ self.v


def hybrid():
    keys = jax.random.split(jax.random.key(7), 3)
    return Hybrid(
        prompt="Classify:",
        lm=LMModule("openai:gpt-4o"),
        service=FakeService(),
        layers=[affine(keys[0], 4, 3), affine(keys[1], 3, 2, activation="linear")],
        head=Head(v=jax.random.normal(keys[2], (2,))),
        scale=jnp.array(2.0),
    )


def test_hybrid_operator_flattens_to_its_arrays_only():
    op = hybrid()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(op)[0]]
    assert paths == [".layers[0].w", ".layers[0].b", ".layers[1].w", ".layers[1].b", ".head.v", ".scale"]
    rebuilt = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(op), jax.tree_util.tree_leaves(op))
    assert rebuilt.prompt == "Classify:" and rebuilt.lm == op.lm and rebuilt.service is op.service


def test_hybrid_operator_under_jit_grad_and_vmap():
    op, x = hybrid(), jnp.ones(4)
    expected = op(x=x)
    np.testing.assert_allclose(jax.jit(lambda op, x: op(x=x))(op, x), expected, rtol=1e-6)
    grads = jax.grad(lambda op: op(x=x))(op)
    assert isinstance(grads, Hybrid) and grads.prompt == "Classify:" and grads.service is op.service
    np.testing.assert_allclose(grads.scale, expected / op.scale, rtol=1e-6)
    batch = jax.vmap(lambda x: op(x=x))(jnp.ones((5, 4)))
    np.testing.assert_allclose(batch, jnp.full(5, expected), rtol=1e-6)
    scales = jnp.array([1.0, 2.0, 3.0])  # vmap over the operator's scale leaf, nothing else
    in_axes = dataclasses.replace(jax.tree_util.tree_map(lambda _: None, op), scale=0)
    per_scale = jax.vmap(lambda op: op(x=x), in_axes=(in_axes,))(dataclasses.replace(op, scale=scales))
    np.testing.assert_allclose(per_scale, expected / op.scale * scales, rtol=1e-6)


def test_undeclared_attribute_in_init_is_a_type_error():
    class Loose(Operator):
        w: jax.Array

        def __init__(self):
            self.w = jnp.ones(2)
            self.cache = {}

        def forward(self, *, inputs):
            return self.w

    with pytest.raises(TypeError, match=r"Loose has no field 'cache'.*annotate it at class level.*static=True"):
        Loose()


def test_array_in_a_static_annotated_field_is_a_type_error():
    class Mislabelled(Operator):
        weights: list

        def forward(self, *, inputs):
            return self.weights

    with pytest.raises(TypeError, match=r"Mislabelled.weights holds an array.*jax.Array.*field\(static=True\)"):
        Mislabelled(weights=[jnp.ones(2)])
    with pytest.raises(TypeError, match=r"Mislabelled.weights holds an array or operator"):
        Mislabelled(weights=[MaybeBiased(w=jnp.ones(1))])
    assert Mislabelled(weights=[1.0, "two", None]).weights == [1.0, "two", None]


class Typed(Operator):
    service: "ModelServiceOnlyImportedUnderTypeChecking | None" = None  # noqa: F821
    children: "dict[str, MaybeBiased]" = field(default_factory=dict)

    def forward(self, *, inputs):
        return inputs


def test_unresolvable_annotations_are_static_and_resolvable_parts_still_count():
    op = Typed(service="svc", children={"a": MaybeBiased(w=jnp.ones(1))})
    assert [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(op)[0]] == [".children['a'].w"]


def test_inherited_fields_keep_their_declarations():
    class Wider(Affine):
        extra: jax.Array = None
        tag: str = "t"

    op = Wider(w=jnp.ones((2, 2)), b=jnp.zeros(2), extra=jnp.ones(1))
    assert [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(op)[0]] == [".w", ".b", ".extra"]


# -- filters ----------------------------------------------------------------------------


def test_is_array_accepts_numpy_jax_and_tracers():
    assert is_array(np.ones(1)) and is_array(jnp.ones(1)) and not is_array(1.0) and not is_array("a")
    assert jax.jit(lambda x: jnp.asarray(is_array(x)))(jnp.ones(1))


def test_partition_and_combine_round_trip_a_nested_operator():
    tree = {"op": hybrid(), "note": "host data", "maybe": None, "count": 3}
    arrays, rest = partition(tree)
    assert all(is_array(leaf) for leaf in jax.tree_util.tree_leaves(arrays))
    assert not any(is_array(leaf) for leaf in jax.tree_util.tree_leaves(rest))
    assert arrays["note"] is None and rest["note"] == "host data" and rest["op"].scale is None
    assert _structure_with_none(arrays) == _structure_with_none(rest)
    back = combine(arrays, rest)
    assert _structure_with_none(back) == _structure_with_none(tree)
    assert back["note"] == "host data" and back["maybe"] is None and back["count"] == 3
    for got, want in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree), strict=True):
        assert got is want


def test_jit_of_the_array_half_with_the_rest_closed_over():
    op, x = hybrid(), jnp.ones(4)
    arrays, rest = partition(op)
    traces = []

    @jax.jit
    def apply(arrays, x):
        traces.append(None)
        return combine(arrays, rest)(x=x)

    np.testing.assert_allclose(apply(arrays, x), op(x=x), rtol=1e-6)
    apply(jax.tree_util.tree_map(lambda a: a * 2, arrays), x)
    assert len(traces) == 1
    grads = jax.grad(lambda arrays: combine(arrays, rest)(x=x))(arrays)
    assert isinstance(grads, Hybrid) and grads.prompt == "Classify:"
