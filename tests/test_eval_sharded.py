"""Sharded batch evaluation: ``mesh=`` runs each item's local generations split over devices,
answers equal the unsharded run's, the journal resumes across meshes, and ``ember eval
--devices N`` builds that mesh (or says which devices there are)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from ember.cli import main
from ember.data import DatasetItem
from ember.eval import EvaluationPipeline, ExactMatchEvaluator, RunOptions, as_system
from ember.local import batch_mesh, shared_batcher

MODEL_ID = "local:smollm2-135m-instruct"
ITEMS = [DatasetItem(str(i), q, a) for i, (q, a) in enumerate(
    [("What is 2+2?", "4"), ("Name a color.", "red"), ("What is the capital of France?", "Paris"), ("Say hi.", "hi")]
)]  # fmt: skip


def _key(results):
    return [(r.item_id, r.output, r.output_tokens, r.error) for r in results.records]


def _pipeline(service, **options):
    system = as_system(MODEL_ID, name="smol", service=service, temperature=0.0, max_tokens=4)
    return EvaluationPipeline(ITEMS, [ExactMatchEvaluator(contains=True)], system, progress=False, **options)


def test_mesh_option_is_checked_before_any_call():
    for bad in (0, -1, True, "2"):
        with pytest.raises(ValueError, match="mesh must be"):
            RunOptions(mesh=bad)
    with pytest.raises(ValueError, match="'batch' axis"):
        RunOptions(mesh=Mesh(np.array(jax.devices()[:2]), ("data",)))
    with pytest.raises(ValueError, match="99 devices asked for, but 8 are available"):
        _pipeline(None, mesh=99)
    assert _pipeline(None, mesh=1)._run.mesh is None  # one device: no mesh, no second weight copy
    assert _pipeline(None, mesh=4)._run.mesh.shape == {"batch": 4}


@pytest.mark.slow
def test_sharded_evaluation_equals_unsharded_and_resumes_without_generating(smollm, tmp_path):
    from ember.config import create_config_manager
    from ember.models import ModelService

    service = ModelService(config_manager=create_config_manager(), cache=False)
    batcher = shared_batcher(smollm)
    mesh = batch_mesh(2)
    path = tmp_path / "run.sqlite"
    try:
        plain = _pipeline(service).evaluate()
        sharded_before = batcher.sharded_batches
        sharded = _pipeline(service, mesh=mesh, journal=path).evaluate()
        assert batcher.sharded_batches > sharded_before  # the items' generations ran on the mesh
        assert _key(sharded) == _key(plain) and sharded.metrics == plain.metrics
        assert all(r.ok and r.output_tokens > 0 for r in sharded.records)

        # Resume: every item is in the journal, so nothing is generated, on the mesh or off it
        # (the mesh is not part of the run's identity: the answers do not depend on it).
        generations = smollm.stats.generate_calls
        again = _pipeline(service, mesh=2, journal=path).evaluate()
        unsharded_resume = _pipeline(service, journal=path).evaluate()
        assert smollm.stats.generate_calls == generations
        assert _key(again) == _key(unsharded_resume) == _key(plain)
    finally:
        service.close()
        smollm._placed.pop(mesh, None)  # the replicated weight copies (0.5 GB each on fake CPU devices)


@pytest.mark.slow
def test_cli_devices_builds_the_mesh_or_names_the_devices_there_are(smollm, loopback_models, tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"query": i.query, "answer": i.answer}) + "\n" for i in ITEMS[:2]))
    argv = ["eval", "--dataset", str(data), "--system", MODEL_ID, "--evaluator", "contains", "--max-tokens", "3",
            "--temperature", "0", "--no-progress", "--report", str(tmp_path / "r")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--devices", "99"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: ember eval") and "Traceback" not in err
    assert "--devices 99: 99 devices asked for, but 8 are available: cpu:0, cpu:1" in err and "cpu:7" in err

    batcher = shared_batcher(smollm)
    before = batcher.sharded_batches
    try:
        assert main([*argv, "--devices", "2"]) == 0
    finally:
        smollm._placed.pop(batch_mesh(2), None)
    after = batcher.sharded_batches
    assert after > before
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["systems"][MODEL_ID]["n_items"] == 2 and report["systems"][MODEL_ID]["n_errors"] == 0
    capsys.readouterr()
    assert main([*argv, "--devices", "2"]) == 0 and "resuming" in capsys.readouterr().out
    assert batcher.sharded_batches == after  # the same journal, whatever --devices says: nothing generated
