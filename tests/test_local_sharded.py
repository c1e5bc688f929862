"""The local model under a current mesh: ``use_mesh`` reaches the provider through Ember's I/O
loop, concurrent requests become one batched generation split over the mesh's batch axis,
and greedy answers equal the unsharded ones token for token."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from ember.local import MeshSpec, MicroBatcher, batch_mesh, current_mesh, shared_batcher, use_mesh
from ember.local import _model as local_model

MODEL_ID = "local:smollm2-135m-instruct"
PROMPTS = ["What is 2+2?", "Name a color.", "What is the capital of France?"]


@contextlib.contextmanager
def freed(model, *meshes):
    """Drop the model's replicated weight copies on ``meshes`` afterwards (0.5 GB each on fake CPU devices)."""
    try:
        yield
    finally:
        for mesh in meshes:
            model._placed.pop(mesh, None)


@contextlib.contextmanager
def recorded_placements(monkeypatch):
    """The ``mesh`` every batched generation of a :class:`LocalModel` ran with."""
    seen: list[Mesh | None] = []
    original = local_model.serve

    def spy(*args, **kwargs):
        seen.append(kwargs.get("mesh"))
        return original(*args, **kwargs)

    monkeypatch.setattr(local_model, "serve", spy)
    yield seen


def service():
    from ember.config import create_config_manager
    from ember.models import ModelService

    return ModelService(config_manager=create_config_manager(), cache=False)


def ask_all(svc, prompts, mesh=None):
    """Submit every prompt from this thread at once (under ``use_mesh(mesh)``), then wait for all."""
    with use_mesh(mesh):
        futures = [svc.submit(MODEL_ID, p, temperature=0.0, max_tokens=5) for p in prompts]
    return [f.result(timeout=300) for f in futures]


# -- the contract, without the model ------------------------------------------------------


def test_use_mesh_nests_turns_off_and_refuses_a_mesh_without_the_batch_axis():
    mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
    assert current_mesh() is None
    with use_mesh(mesh) as spec:
        assert spec == current_mesh() == MeshSpec(mesh, "batch")
        with use_mesh(None):
            assert current_mesh() is None
        seen = []
        thread = threading.Thread(target=lambda: seen.append(current_mesh()))  # a bare thread: no context copy
        thread.start(), thread.join()
        assert seen == [None] and current_mesh() == spec
    assert current_mesh() is None
    with (
        pytest.raises(ValueError, match="not the batch axis 'batch'"),
        use_mesh(Mesh(np.array(jax.devices()[:2]), ("data",))),
    ):
        pass
    assert batch_mesh(1) is None and batch_mesh(None) is None and batch_mesh(mesh) is mesh
    assert batch_mesh(4).shape == {"batch": 4}
    with pytest.raises(ValueError, match="99 devices asked for, but 8 are available: cpu:0, cpu:1"):
        batch_mesh(99)


class _StubModel:
    """Just enough of a LocalModel for the batcher: records the placement of each batch."""

    context_window = 100

    def __init__(self):
        self.calls = []

    def encode(self, prompt, assistant_prefix=""):
        return [1, 2, 3]

    def serve(self, requests, *, arrivals, max_rows, min_mode, mesh=None, batch_axis="batch"):
        self.calls.append((len(requests), mesh, batch_axis))
        results = [types.SimpleNamespace(text=f"row {i}") for i in range(len(requests))]
        for request, result in zip(requests, results):
            request.on_done(result)
        return results


def test_requests_under_different_meshes_never_share_a_batch():
    a = Mesh(np.array(jax.devices()[:2]), ("batch",))
    b = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("batch", "model"))
    model = _StubModel()
    batcher = MicroBatcher(model, window_s=0.5)
    placements = [MeshSpec(a, "batch"), None, MeshSpec(b, "batch"), MeshSpec(a, "batch"), None]
    futures = [batcher.submit("hi", None, mesh=spec) for spec in placements]
    concurrent.futures.wait(futures, timeout=10)
    batcher.close()
    assert all(f.done() for f in futures)
    assert sorted(model.calls, key=repr) == sorted([(2, a, "batch"), (2, None, "batch"), (1, b, "batch")], key=repr)
    assert batcher.batches == 3 and batcher.sharded_batches == 2
    with pytest.raises(TypeError, match="MeshSpec"):
        batcher.submit("hi", None, mesh=a)


# -- through the provider, for real -------------------------------------------------------


@pytest.mark.slow
def test_concurrent_provider_calls_under_use_mesh_are_one_sharded_batch_with_the_same_tokens(smollm, monkeypatch):
    """Three calls made from this thread under a 2-device mesh: one batch (padded to 4 rows,
    2 per device), generated on the mesh, answering as the unsharded run does."""
    mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
    batcher = shared_batcher(smollm)
    monkeypatch.setattr(batcher, "window_s", 0.5)  # the three calls surely meet in one window
    svc = service()
    with freed(smollm, mesh), recorded_placements(monkeypatch) as placements:
        try:
            plain = ask_all(svc, PROMPTS)
            batches, sharded = batcher.batches, batcher.sharded_batches
            on_mesh = ask_all(svc, PROMPTS, mesh)
        finally:
            svc.close()
        assert batcher.batches - batches == 1 and batcher.sharded_batches - sharded == 1
        assert placements == [None, mesh]
        placed = smollm._placed[mesh]  # the weights were replicated over the mesh for that batch
        assert placed.embed.sharding.mesh == mesh and len(placed.embed.sharding.device_set) == 2
    assert [r.text for r in on_mesh] == [r.text for r in plain]
    assert [r.usage.output_tokens for r in on_mesh] == [r.usage.output_tokens for r in plain]
    assert all(r.usage.output_tokens > 0 for r in plain)


@pytest.mark.slow
def test_one_request_on_a_larger_mesh_with_a_model_axis(smollm, monkeypatch):
    """A batch of 1 on a 2x2 (batch, model) mesh: padded to the batch axis, replicated over "model"."""
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("batch", "model"))
    svc = service()
    with freed(smollm, mesh), recorded_placements(monkeypatch) as placements:
        try:
            [plain] = ask_all(svc, PROMPTS[:1])
            [on_mesh] = ask_all(svc, PROMPTS[:1], mesh)
        finally:
            svc.close()
        assert placements == [None, mesh]
    assert (on_mesh.text, on_mesh.usage.output_tokens) == (plain.text, plain.usage.output_tokens)


def test_only_the_last_two_meshes_keep_a_copy_of_the_weights():
    """Each mesh holds one copy of the weights per device: older meshes give theirs back."""
    import types

    from ember.local import LocalModel

    model = types.SimpleNamespace(params={"w": np.ones(4, np.float32)}, _placed={})
    meshes = [Mesh(np.array(jax.devices()[i : i + 2]), ("batch",)) for i in (0, 2, 4)]
    for mesh in [meshes[0], meshes[1], meshes[0], meshes[2]]:
        placed = LocalModel._params_on(model, mesh, "batch")
        assert placed["w"].sharding.device_set == set(mesh.devices.flat)
    assert list(model._placed) == [meshes[0], meshes[2]]  # meshes[1] was the least recently used


def test_a_prompt_prefilled_in_chunks_joins_a_sharded_batch_with_its_own_tokens(smollm):
    from ember.local import GenerationConfig, GenerationRequest

    mesh = batch_mesh(8)
    question = smollm.encode("What did the cat do? The cat sat on the mat and looked at the birds in the garden.")
    config = GenerationConfig(max_new_tokens=8)
    done = []

    class OneArrival:
        """The question, handed over once the running row has its first tokens."""

        def __init__(self) -> None:
            self.waiting = [GenerationRequest(question, config, on_done=done.append)]
            self.started = False

        def take(self, fits, limit):
            ready = self.started and self.waiting and fits(question, config)
            return [self.waiting.pop()] if ready else []

    arrival = OneArrival()
    running = GenerationRequest(
        smollm.encode("Summarise: " + "the cat sat on the mat. " * 8),
        GenerationConfig(max_new_tokens=64, ignore_eos=True),
        on_tokens=lambda ids: setattr(arrival, "started", True),
    )
    chunk, before = smollm.prefill_chunk, dict(vars(smollm.stats))
    smollm.prefill_chunk = 16  # the question's 51 tokens: 4 chunks
    try:
        with freed(smollm, mesh):
            smollm.serve([running], mesh=mesh, arrivals=arrival, max_rows=8)
    finally:
        smollm.prefill_chunk = chunk
    assert smollm.stats.prefill_chunks - before["prefill_chunks"] == 4
    assert smollm.stats.joined_rows - before["joined_rows"] == 1
    assert done[0].token_ids == smollm.generate_tokens([question], config)[0].token_ids
