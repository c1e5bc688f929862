"""The transforms (vmap, pmap, compose, DeviceMesh, PartitionSpec, mesh_sharded) on 8 fake CPU
devices, against the loopback server: host work fans out once per item within its caps, array
work equals jax.vmap and composes with jax.jit and jax.grad, and sharded outputs are sharded."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from ember.api import non
from ember.api.operators import EmberModel, Operator, Specification
from ember.operators import EnsembleOutput, LMModule
from ember.xcs import (
    BatchAxisError,
    DeviceMesh,
    NotTraceableError,
    PartitionSpec,
    TransformError,
    UnknownDeviceError,
    compose,
    mesh_sharded,
    pmap,
    vmap,
)
from tests.helpers import XIn, YOut, eventually

QUERIES = [f"What is {n} + {n}?" for n in range(1, 9)]


def user_prompts(server):
    return sorted(m["content"] for r in server.requests for m in r.body["messages"] if m["role"] == "user")


def device_names(n):
    """The seed writes "gpu:0".."gpu:3"; on a machine without GPUs the same mesh is built from CPUs."""
    platform = "gpu" if jax.default_backend() == "gpu" else "cpu"
    return [f"{platform}:{i}" for i in range(n)]


# -- host work -------------------------------------------------------------------------------


class DataInput(EmberModel):
    data: str


class ProcessItem(Operator[DataInput, EnsembleOutput]):
    """The seed's ``process_item``: an ensemble of three samples of one model."""

    specification = Specification(input_model=DataInput, structured_output=EnsembleOutput)
    ensemble: non.UniformEnsemble

    def forward(self, *, inputs: DataInput) -> EnsembleOutput:
        return self.ensemble(query=inputs.data)


def test_the_seed_transform_example_runs_as_written(loopback_models):
    server = loopback_models.server
    server.latency = 0.05
    process_item = ProcessItem(ensemble=non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o"))
    item1, item2, item3 = QUERIES[:3]
    complex_data = {"data": QUERIES}

    # Vectorized mapping for batch processing
    batch_processor = vmap(process_item)
    batch_results = batch_processor(inputs={"data": [item1, item2, item3]})
    # Parallel execution across multiple workers
    parallel_processor = pmap(process_item, num_workers=4)
    parallel_results = parallel_processor(inputs=complex_data)
    # Combine transformations for complex pipelines
    pipeline = compose(vmap(batch_size=32), pmap(num_workers=4))(process_item)
    # Device mesh sharding for multi-device execution
    mesh = DeviceMesh(devices=device_names(4), mesh_shape=(2, 2))
    partition = PartitionSpec("batch", "model")
    sharded_op = mesh_sharded(pipeline, mesh=mesh, partition_spec=partition)

    assert batch_results.responses == [[str(2 * n)] * 3 for n in (1, 2, 3)]
    assert parallel_results.responses == [[str(2 * n)] * 3 for n in range(1, 9)]
    assert pipeline(inputs=complex_data).responses == parallel_results.responses
    server.reset()
    assert sharded_op(inputs=complex_data).responses == parallel_results.responses
    # each item asked once (3 samples each), never once per replica of the 2 x 2 mesh
    assert user_prompts(server) == sorted(QUERIES * 3)


def test_vmap_equals_the_loop_sends_the_same_requests_and_has_them_all_in_flight(loopback_models):
    server = loopback_models.server
    op = non.UniformEnsemble(num_units=1, model_name="openai:gpt-4o", temperature=0.0)
    batch = [{"query": q} for q in QUERIES]
    expected = [op(inputs=x) for x in batch]
    eager_prompts = user_prompts(server)
    server.reset()
    server.latency = 0.2

    assert vmap(op)(batch) == expected
    assert user_prompts(server) == eager_prompts
    assert server.stats.max_in_flight == len(QUERIES)


def test_prompts_to_a_model_are_bounded_by_its_budget_not_by_worker_threads(loopback_models):
    from ember.xcs._mapped import HOST_WIDTH

    loopback_models.config.update_config("model_registry", {"default_max_concurrency": 2 * HOST_WIDTH})
    server = loopback_models.server
    server.latency = 0.3
    prompts = [f"What is {n} + 1?" for n in range(2 * HOST_WIDTH + 20)]
    assert vmap(LMModule("openai:gpt-4o"))(prompts) == [str(n + 1) for n in range(len(prompts))]
    assert server.stats.max_in_flight == 2 * HOST_WIDTH


def test_fields_of_batches_come_back_as_fields_of_batches(loopback_models):
    op = non.UniformEnsemble(num_units=2, model_name="openai:gpt-4o")
    out = vmap(op)(inputs={"query": QUERIES[:3]})
    assert isinstance(out, EnsembleOutput)
    assert out.responses == [["2", "2"], ["4", "4"], ["6", "6"]]


def test_pmap_never_has_more_than_num_workers_in_flight(loopback_models):
    server = loopback_models.server
    server.latency = 0.05
    lm = LMModule("openai:gpt-4o")
    answers = pmap(lm, num_workers=4)(QUERIES * 2)
    assert answers == [str(2 * n) for n in range(1, 9)] * 2
    assert server.stats.total == 16 and server.stats.max_in_flight == 4


def test_composed_caps_are_the_smaller_ones(loopback_models):
    server = loopback_models.server
    server.latency = 0.05
    pipeline = compose(vmap(batch_size=2), pmap(num_workers=3))(LMModule("openai:gpt-4o"))
    assert pipeline(QUERIES) == [str(2 * n) for n in range(1, 9)]
    assert server.stats.max_in_flight == 2


def test_mesh_sharded_host_work_asks_each_item_once_on_a_2x4_mesh(loopback_models):
    server = loopback_models.server
    mesh = DeviceMesh(mesh_shape=(2, 4))
    answers = mesh_sharded(LMModule("openai:gpt-4o"), mesh=mesh, partition_spec=PartitionSpec("batch", "model"))(
        QUERIES
    )
    assert answers == [str(2 * n) for n in range(1, 9)]
    assert user_prompts(server) == sorted(QUERIES)


class FailsOnBoom(Operator):
    """Asks the model, except for "boom", which fails once the other items' calls are in flight."""

    server: object

    def forward(self, *, inputs):
        if inputs.query == "boom":
            self.server.wait_for_in_flight(4)
            raise ValueError("boom item")
        return LMModule("openai:gpt-4o")(inputs.query)


def test_a_failing_item_cancels_the_others_and_is_raised_with_its_index(loopback_models):
    server = loopback_models.server
    server.latency = 30.0
    batch = [{"query": q} for q in QUERIES[:4]]
    batch.insert(2, {"query": "boom"})
    with pytest.raises(ValueError, match="boom item") as info:
        vmap(FailsOnBoom(server=server))(batch)
    assert any("item 2 of 5" in note for note in info.value.__notes__)
    assert eventually(lambda: all(r.client_closed for r in server.requests))


# -- array work ------------------------------------------------------------------------------


class Affine(Operator[XIn, YOut]):
    """An array operator that also holds a string, a model handle and a sub-operator."""

    specification = Specification(input_model=XIn, structured_output=YOut)
    w: jax.Array
    b: jax.Array
    inner: Operator | None = None
    activation: str = "tanh"
    judge: LMModule = LMModule("openai:gpt-4o")

    def forward(self, *, inputs: XIn) -> YOut:
        y = jnp.tanh(inputs.x @ self.w + self.b)
        return self.inner(x=y) if self.inner is not None else YOut(y=y)


def affine(seed, n_in=4, n_out=4, inner=None):
    key_w, key_b = jax.random.split(jax.random.key(seed))
    return Affine(w=jax.random.normal(key_w, (n_in, n_out)), b=jax.random.normal(key_b, (n_out,)), inner=inner)


OP = affine(0, inner=affine(1))
XS = jax.random.normal(jax.random.key(2), (16, 4))
REFERENCE = jax.vmap(lambda x: OP(x=x).y)(XS)


def mesh_vmap(op, **kwargs):
    return mesh_sharded(op, mesh=DeviceMesh(mesh_shape=(8,)), **kwargs)


TRANSFORMS = {
    "vmap": vmap,
    "pmap": pmap,
    "mesh_sharded": mesh_vmap,
    "vmap_in_chunks": lambda op: vmap(op, batch_size=5),
}


class TestArrayVariants(chex.TestCase):
    """Every transform of an array operator equals jax.vmap, eager and jitted (chex.variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*TRANSFORMS.items())
    def test_equals_jax_vmap(self, transform):
        run = self.variant(lambda op, xs: transform(op)(x=xs).y)
        chex.assert_trees_all_close(run(OP, XS), REFERENCE, rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_vmap_to_the_operators_arrays():
    def loss(op):
        return jnp.sum(vmap(op)(x=XS).y ** 2)

    def reference(op):
        return jnp.sum(jax.vmap(lambda x: op(x=x).y)(XS) ** 2)

    chex.assert_trees_all_close(jax.grad(loss)(OP), jax.grad(reference)(OP), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.jit(jax.grad(loss))(OP), jax.grad(reference)(OP), rtol=1e-5, atol=1e-6)


def test_mesh_sharded_output_is_sharded_over_all_8_devices():
    mesh = DeviceMesh(mesh_shape=(2, 4))
    out = mesh_sharded(OP, mesh=mesh, partition_spec=PartitionSpec("batch", "model"))(x=XS).y
    assert isinstance(out.sharding, jax.sharding.NamedSharding)
    assert out.sharding.mesh.devices.size == 8 and out.sharding.device_set == set(jax.devices())
    chex.assert_trees_all_close(out, REFERENCE, rtol=1e-5, atol=1e-6)


def test_a_batch_that_does_not_divide_the_mesh_is_padded_and_trimmed():
    out = pmap(OP)(x=XS[:5]).y
    chex.assert_trees_all_close(out, REFERENCE[:5], rtol=1e-5, atol=1e-6)


def test_sharded_calls_reuse_the_compiled_program():
    from ember.xcs._mapped import _sharded

    sharded = mesh_vmap(OP)
    sharded(x=XS)
    before = _sharded._cache_size()
    sharded(x=XS + 1.0)
    mesh_vmap(affine(7, inner=affine(8)))(x=XS)  # other weights, same structure
    assert _sharded._cache_size() == before


def test_mixed_inputs_are_split_per_item_and_reassembled():
    def tag(*, inputs):
        return {"scaled": inputs["x"] * 2.0, "label": f"{inputs['name']}:{float(inputs['x'].sum()):.0f}"}

    out = vmap(tag)(inputs={"x": np.arange(6.0).reshape(3, 2), "name": ["a", "b", "c"]})
    np.testing.assert_allclose(out["scaled"], np.arange(6.0).reshape(3, 2) * 2.0)
    assert out["label"] == ["a:1", "b:5", "c:9"]


def test_broadcast_inputs_and_in_axes():
    fn = vmap(lambda x, y: x * y, in_axes=(None, 0))
    np.testing.assert_allclose(fn(3.0, jnp.arange(4.0)), 3.0 * np.arange(4.0))
    by_field = vmap(lambda *, inputs: inputs["a"] + inputs["b"], in_axes={"a": 1})
    out = by_field(inputs={"a": jnp.ones((2, 3)), "b": jnp.arange(3.0)})  # a's columns meet b's entries
    np.testing.assert_allclose(out, np.repeat(1.0 + np.arange(3.0)[:, None], 2, axis=1))
    assert vmap(lambda *, inputs: f"{inputs['p']} {inputs['q']}")(inputs={"p": "hi", "q": ["a", "b"]}) == [
        "hi a",
        "hi b",
    ]


# -- errors ----------------------------------------------------------------------------------


def test_batch_sizes_that_differ_name_the_fields():
    with pytest.raises(BatchAxisError, match=r"'x': 3, field 'name': 2"):
        vmap(lambda *, inputs: inputs)(inputs={"x": jnp.ones(3), "name": ["a", "b"]})


def test_nothing_to_map_and_bad_in_axes_are_typed_errors():
    with pytest.raises(BatchAxisError, match="nothing to map over"):
        vmap(lambda *, inputs: inputs)(inputs={"q": "one string"})
    with pytest.raises(BatchAxisError, match="Did you mean: query"):
        vmap(lambda *, inputs: inputs, in_axes={"qeury": 0})(inputs={"query": ["a"]})
    with pytest.raises(BatchAxisError, match="out of range"):
        vmap(lambda x: x, in_axes=2)(jnp.ones((2, 2)))
    with pytest.raises(BatchAxisError, match="has no batch axis"):
        vmap(lambda x, y: x, in_axes=(0, 0))(jnp.ones(2), "text")


def test_an_operator_that_needs_concrete_values_says_how_to_map_it():
    def asks_a_model(x):
        return LMModule("openai:gpt-4o")(f"What is {float(x)}?")

    with pytest.raises(NotTraceableError, match="Pass host inputs as lists"):
        vmap(asks_a_model)(jnp.arange(3.0))


def test_misused_transforms_and_meshes_are_typed_errors():
    with pytest.raises(TransformError, match="use compose"):
        vmap(vmap(batch_size=2))
    with pytest.raises(TransformError, match="apply the composed transform"):
        compose(vmap(lambda x: x))
    with pytest.raises(TransformError, match="positive int"):
        pmap(num_workers=0)
    with pytest.raises(UnknownDeviceError, match="Devices here: cpu:0, cpu:1"):
        DeviceMesh(devices=["cpu:42"])
    with pytest.raises(UnknownDeviceError, match="platform:index"):
        DeviceMesh(devices=["gpu"])
    with pytest.raises(TransformError, match="does not hold the 4 devices"):
        DeviceMesh(devices=device_names(4), mesh_shape=(3, 2))
    with pytest.raises(TransformError, match="not axes of the mesh"):
        mesh_sharded(OP, mesh=DeviceMesh(), partition_spec=PartitionSpec("rows"))


# -- the embedded model under the transforms -------------------------------------------------

LOCAL_PROMPTS = ["What is 2 + 2?", "What is the capital of France?", "Name a primary colour."]


@pytest.mark.slow
def test_local_prompts_under_vmap_and_mesh_sharded_are_one_batched_generation(smollm, monkeypatch):
    from ember.local import shared_batcher

    batcher = shared_batcher(smollm)
    monkeypatch.setattr(batcher, "window_s", 0.5)  # the items surely meet in one window
    lm = LMModule("local:smollm2-135m-instruct", temperature=0.0, max_tokens=6)
    eager = [lm(p) for p in LOCAL_PROMPTS]

    batches = batcher.batches
    assert vmap(lm)(LOCAL_PROMPTS) == eager
    assert batcher.batches - batches == 1

    mesh = DeviceMesh(devices=device_names(2))
    try:
        batches, sharded = batcher.batches, batcher.sharded_batches
        assert mesh_sharded(lm, mesh=mesh)(LOCAL_PROMPTS) == eager  # greedy: token for token
        assert batcher.batches - batches == 1 and batcher.sharded_batches - sharded == 1
        assert smollm._placed[mesh].embed.sharding.device_set == set(mesh.devices.flat)
    finally:
        smollm._placed.pop(mesh, None)  # the replicated weight copies


def test_a_mesh_shape_without_devices_takes_the_first_devices():
    mesh = DeviceMesh(mesh_shape=(2, 2))
    assert list(mesh.devices.flat) == jax.devices()[:4] and mesh.axis_names == ("batch", "model")
    with pytest.raises(TransformError, match="needs 16 devices; there are 8"):
        DeviceMesh(mesh_shape=(4, 4))
