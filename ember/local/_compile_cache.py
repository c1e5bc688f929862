"""No compiling on the hot path: JAX's persistent compilation cache, and bucket warm-up.

Every shape bucket of :mod:`ember.local._generate` (batch, prompt length, cache length,
attention window, sampling mode) is its own XLA program, and on the 2-core dev machine a
decode program takes seconds to compile. Two remedies:

- **The persistent cache.** :func:`enable_compile_cache` points JAX's compilation cache at
  a directory (default ``$XDG_CACHE_HOME/ember/jax``, i.e. ``~/.cache/ember/jax``), with no
  minimum compile time or entry size, so every program is stored. A second process that
  runs the same workload loads the executables instead of compiling them. ``load_model``
  enables it (importing ``ember`` does not). ``EMBER_COMPILE_CACHE`` overrides the
  directory; ``EMBER_COMPILE_CACHE=off`` (or ``0``, ``false``, ``none``) disables it. When
  JAX already has a cache directory (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update``), that one is kept.
- **Warm-up.** :func:`warm_up` compiles (ahead of time, running nothing) the prefill and
  decode programs of the buckets a workload will hit; with the cache holding them, that is
  a load from disk. :func:`start_warm_up` does it on a daemon thread, so a request that
  arrives meanwhile just proceeds (it never waits for the warm-up: compiling takes no lock).

:func:`compile_counts` counts backend compiles and persistent-cache hits in this process
(``jax.monitoring`` events), which is how the tests show that a second process compiles
nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ember.local._generate import MIN_CACHE_BUCKET, _begin, _decode, _prompts, attention_window, bucket, prompt_bucket
from ember.local._sampling import FILTER, SAMPLE, SamplingParams

__all__ = [
    "compile_cache_dir",
    "compile_counts",
    "enable_compile_cache",
    "ensure_compile_cache",
    "start_warm_up",
    "warm_up",
]

logger = logging.getLogger(__name__)

ENV_VAR = "EMBER_COMPILE_CACHE"
_OFF = {"", "0", "off", "false", "no", "none", "disabled"}

_lock = threading.Lock()
_enabled: Path | None = None
_decided = False  # enable_compile_cache has run: ensure_compile_cache leaves its choice alone
_counts: dict[str, float] = {"compiles": 0, "compile_seconds": 0.0, "cache_hits": 0, "cache_misses": 0}
_listening = False


def compile_cache_dir() -> Path | None:
    """The cache directory ``EMBER_COMPILE_CACHE`` names, else ``$XDG_CACHE_HOME/ember/jax``
    (``~/.cache/ember/jax``); ``None`` when the variable switches the cache off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        if value.strip().lower() in _OFF:
            return None
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ember" / "jax"


def enable_compile_cache(path: str | os.PathLike | bool | None = True) -> Path | None:
    """Turn on JAX's persistent compilation cache; return the directory in use (or ``None``).

    ``path``: ``True`` (default) for :func:`compile_cache_dir`, a directory, or ``False`` /
    ``None`` to leave the cache off. A directory JAX was already given wins. Safe to call
    repeatedly and after other programs have compiled (JAX opens the cache lazily).
    """
    global _enabled, _decided
    _listen()
    with _lock:
        _decided = True
        if path is False or path is None:
            return None
        current = jax.config.jax_compilation_cache_dir
        if current:
            _enabled = Path(current)
            return _enabled
        target = compile_cache_dir() if path is True else Path(path).expanduser()
        if target is None:
            return None
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only home, etc.: run without the cache
            logger.warning("JAX compilation cache disabled: cannot create %s (%s)", target, exc)
            return None
        jax.config.update("jax_compilation_cache_dir", str(target))
        # Store every program: ours compile in 0.1-10 s and even small ones add up per bucket.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        _enabled = target
        return target


def ensure_compile_cache() -> None:
    """:func:`enable_compile_cache` with the default directory, unless it was called already
    (so an explicit choice, such as the provider's ``compile_cache: false``, stands)."""
    if not _decided:
        enable_compile_cache()


def compile_counts() -> dict[str, float]:
    """Counters since the first :func:`enable_compile_cache` (or :func:`compile_counts`) call:
    ``compiles`` (XLA backend compiles, cache loads excluded), ``compile_seconds`` (the time
    they took), ``cache_hits`` (programs loaded from the persistent cache) and
    ``cache_misses`` (looked up, not found)."""
    _listen()
    with _lock:
        return dict(_counts)


def _listen() -> None:
    global _listening
    with _lock:
        if _listening:
            return
        _listening = True
    loading = threading.local()  # a compile's events come on the thread that asked for it

    def on_event(event: str, **_: object) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            loading.hit = True  # the backend_compile_duration that follows is a load
            with _lock:
                _counts["cache_hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":
            with _lock:
                _counts["cache_misses"] += 1

    def on_duration(event: str, seconds: float, **_: object) -> None:
        if event != "/jax/core/compile/backend_compile_duration":
            return
        if getattr(loading, "hit", False):
            loading.hit = False
            return
        with _lock:
            _counts["compiles"] += 1
            _counts["compile_seconds"] += seconds

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)


def warm_up(
    model: Any,
    *,
    batch_sizes: Iterable[int] = (1, 2, 4, 8),
    prompt_tokens: Iterable[int] = (48,),
    max_new_tokens: int = 256,
    modes: Sequence[str] = (SAMPLE, FILTER),
    stop: threading.Event | None = None,
) -> int:
    """Compile, without running, the programs that ``model`` (a :class:`~ember.local.LocalModel`;
    ``_model`` imports this module, so it is not imported here) uses for these shapes.

    For each batch bucket (of ``batch_sizes``), prompt bucket (of ``prompt_tokens``) and
    sampling mode: the prefill of ``batch`` distinct prompts and of one prompt shared by the
    batch (an ensemble), and the decode chunks over every attention window up to the cache
    bucket of ``max_new_tokens`` new tokens. Unsharded only. Returns the programs compiled
    (or loaded from the persistent cache); ``stop`` ends it early.
    """
    params, config = model.params, model.config
    i32 = jnp.int32
    static = {"mesh": None, "axis": "batch"}
    chunk = model.decode_chunk
    end = np.asarray(sorted(model.end_ids) or [-1], np.int32)
    done = 0
    prompts_done: set[tuple[int, int]] = set()
    for b in sorted({bucket(max(1, int(n))) for n in batch_sizes}):
        sampling = SamplingParams(
            temperature=jax.ShapeDtypeStruct((b,), jnp.float32),
            top_k=jax.ShapeDtypeStruct((b,), i32),
            top_p=jax.ShapeDtypeStruct((b,), jnp.float32),
            seed=jax.ShapeDtypeStruct((b, 2), jnp.uint32),
            max_new=jax.ShapeDtypeStruct((b,), i32),
            use_eos=jax.ShapeDtypeStruct((b,), jnp.bool_),
        )
        row_map = jax.ShapeDtypeStruct((b,), i32)
        for t in sorted({prompt_bucket(max(1, int(n))) for n in prompt_tokens}):
            room = config.context_length - t
            if room < 1:
                continue
            s = bucket(t + min(max_new_tokens, room), MIN_CACHE_BUCKET)
            for mode in modes:
                for u in sorted({1, b}):
                    if stop is not None and stop.is_set():
                        return done
                    tokens, start = jax.ShapeDtypeStruct((u, t), i32), jax.ShapeDtypeStruct((u,), i32)
                    if (u, t) not in prompts_done:
                        _prompts.lower(params, tokens, start, config=config).compile()
                        prompts_done.add((u, t))
                        done += 1
                    hidden, scratch = jax.eval_shape(lambda *a: _prompts(*a, config=config), params, tokens, start)
                    args = (params, hidden, scratch, start, row_map, sampling, end)
                    _begin.lower(*args, cache_len=s, mode=mode, **static).compile()
                    done += 1
                state, _ = jax.eval_shape(lambda *a, s=s, mode=mode: _begin(*a, cache_len=s, mode=mode, **static), *args)
                windows = sorted({attention_window(slot, chunk, s) for slot in range(t, s, chunk)})
                for window in windows:
                    if stop is not None and stop.is_set():
                        return done
                    _decode.lower(
                        params, state, sampling, end, config=config, chunk=chunk, window=window, mode=mode, **static
                    ).compile()
                    done += 1
    return done


def start_warm_up(model: Any, **options: object) -> tuple[threading.Thread, threading.Event]:
    """:func:`warm_up` on a daemon thread; set the returned event to stop it early.

    Requests are not held back: compiling takes no model lock, so a request for a bucket
    not yet warm compiles it itself, as it would have without the warm-up.
    """
    stop = threading.Event()

    def run() -> None:
        try:
            n = warm_up(model, stop=stop, **options)  # type: ignore[arg-type]
            logger.debug("warmed %d programs of %s", n, model)
        except Exception:  # a warm-up failure must never break serving
            logger.warning("local model warm-up failed", exc_info=True)

    thread = threading.Thread(target=run, name="ember-local-warm-up", daemon=True)
    thread.start()
    return thread, stop
