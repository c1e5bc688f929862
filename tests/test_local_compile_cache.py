"""No compiling on the hot path: the persistent compilation cache (a second process that runs
a workload the cache holds compiles nothing) and the bucket warm-up (a warmed shape compiles
nothing when a request uses it). Compilations are counted with ``compile_counts``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ember.local import GenerationConfig, compile_cache_dir, compile_counts, start_warm_up, warm_up

ROOT = Path(__file__).resolve().parents[1]

# A small workload: two direct prompts and an 8-request burst through the micro-batcher.
WORKLOAD = textwrap.dedent(
    """
    import json
    import jax
    from ember.local import GenerationConfig, compile_counts, load_model, shared_batcher

    model = load_model()
    config = GenerationConfig(max_new_tokens=6)
    texts = [g.text for g in model.generate(["What is 2+2?", "Name a color."], config)]
    batcher = shared_batcher(model, window_s=0.05, max_batch=8)
    sampled = GenerationConfig(max_new_tokens=6, temperature=0.7, top_p=0.9, seed=1)
    futures = [batcher.submit("Say hi.", sampled) for _ in range(8)]
    texts += [f.result(timeout=300).text for f in futures]
    print(json.dumps({"counts": compile_counts(), "texts": texts, "dir": jax.config.jax_compilation_cache_dir}))
    """
)


def _run(code: str, **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cache_dir_follows_env_and_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("EMBER_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "ember" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache_dir() == Path.home() / ".cache" / "ember" / "jax"
    monkeypatch.setenv("EMBER_COMPILE_CACHE", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"
    for off in ("off", "0", "false", "none", ""):
        monkeypatch.setenv("EMBER_COMPILE_CACHE", off)
        assert compile_cache_dir() is None


def test_off_leaves_jax_without_a_cache(tmp_path):
    code = textwrap.dedent(
        """
        import json, jax, jax.numpy as jnp
        from ember.local._compile_cache import compile_counts, ensure_compile_cache
        ensure_compile_cache()
        jax.jit(lambda x: x * 3)(jnp.ones(3)).block_until_ready()
        print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "counts": compile_counts()}))
        """
    )
    out = _run(code, EMBER_COMPILE_CACHE="off", XDG_CACHE_HOME=str(tmp_path))
    assert out["dir"] is None
    assert out["counts"]["compiles"] >= 1 and out["counts"]["cache_hits"] == 0
    assert not (tmp_path / "ember").exists()


def test_import_ember_does_not_enable_the_cache(tmp_path):
    code = "import json, jax, ember, ember.local; print(json.dumps({'dir': jax.config.jax_compilation_cache_dir}))"
    assert _run(code, XDG_CACHE_HOME=str(tmp_path))["dir"] is None


@pytest.mark.slow
def test_second_process_compiles_nothing(tmp_path):
    cache = tmp_path / "jax"
    first = _run(WORKLOAD, EMBER_COMPILE_CACHE=str(cache))
    second = _run(WORKLOAD, EMBER_COMPILE_CACHE=str(cache))
    assert first["dir"] == second["dir"] == str(cache)
    assert first["counts"]["compiles"] > 0 and first["counts"]["compile_seconds"] > 0
    assert any(cache.iterdir())
    assert second["counts"]["compiles"] == 0 and second["counts"]["compile_seconds"] == 0, second["counts"]
    assert second["counts"]["cache_hits"] >= first["counts"]["compiles"]
    assert second["texts"] == first["texts"]  # loaded programs compute the same tokens


@pytest.mark.slow
def test_warmed_buckets_do_not_compile_on_the_request(smollm):
    prompt = "Count from one to five, in words, separated by commas."
    n_tokens = len(smollm.encode(prompt))
    # Rows run to the end together (no early finish, so no compaction to an unwarmed size).
    config = GenerationConfig(max_new_tokens=40, temperature=0.7, top_p=0.9, ignore_eos=True)
    warmed = warm_up(smollm, batch_sizes=[3], prompt_tokens=[n_tokens], max_new_tokens=40, modes=["filter"])
    assert warmed >= 4  # prompts' forward (4 distinct, 1 shared), their two starts, >= 1 decode window
    before = compile_counts()["compiles"]
    smollm.generate([prompt, prompt + " ", prompt + "  "], config)  # distinct prompts: batch bucket 4
    smollm.generate([prompt] * 4, config)  # one prompt shared by 4 rows
    assert compile_counts()["compiles"] == before


@pytest.mark.slow
def test_background_warm_up_can_be_stopped(smollm):
    thread, stop = start_warm_up(smollm, batch_sizes=[1, 2, 4, 8, 16], prompt_tokens=[300], max_new_tokens=300)
    stop.set()
    thread.join(timeout=120)
    assert not thread.is_alive()


@pytest.mark.slow
def test_provider_warmup_option_starts_a_background_warm_up(smollm, monkeypatch):
    from ember.models.providers import local as local_provider
    from ember.models.providers._base import ProviderSettings

    started = []
    monkeypatch.setattr(local_provider, "start_warm_up", lambda model, **options: started.append((model, options)))
    settings = ProviderSettings(name="local", kind="local", options={"max_batch": 4, "warmup": True})
    provider = local_provider.LocalProvider(settings)
    assert provider._load(smollm.path) is smollm
    assert provider._load(smollm.path) is smollm  # once per model file
    assert started == [(smollm, {"batch_sizes": [1, 2, 4]})]
