"""``LocalModel``: one loaded GGUF model, and ``load_model``, which loads each file once per process.

Loading SmolLM2-135M (parse, dequantize, stack, copy to the device) takes seconds and
0.25 GB (int8) to 0.5 GB (float32) of weights, so models are cached per (file, precision, dtype) behind a lock: the
first caller loads, concurrent callers wait for that load, later callers get the same
object. Generation on one model is serialised by its own lock; batching many requests
into one generation is the job of :mod:`ember.local._batcher`, not of concurrent calls.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ember.local._chat import ChatFormat, chat_format_from_template
from ember.local._compile_cache import ensure_compile_cache
from ember.local._generate import (
    PREFILL_CHUNK,
    Arrivals,
    Generation,
    GenerationConfig,
    GenerationRequest,
    GenerationStats,
    bucket,
    prompt_bucket,
    serve,
)
from ember.local._gguf import read_gguf
from ember.local._llama import LlamaConfig, LlamaParams, forward, init_cache, params_from_gguf, unembed
from ember.local._messages import Prompt, normalize_messages
from ember.local._paths import resolve_model_path
from ember.local._quant import PRECISIONS, Precision, quantize_tensor
from ember.local._sampling import GREEDY
from ember.local._tokenizer import GGUFTokenizer

__all__ = ["LocalModel", "Prompt", "default_dtype", "default_precision", "load_model", "resolve_precision"]

# Used when a GGUF has no general.sampling.* metadata: the values SmolLM2's model card
# recommends (temperature 0.2, top_p 0.9).
_FALLBACK_TEMPERATURE = 0.2
_FALLBACK_TOP_P = 0.9


def default_dtype() -> Any:
    """float32 on CPU, bfloat16 on accelerators.

    XLA:CPU has no fast bfloat16 matmul on the dev machine: a [1, 576] x [576, 12288]
    product took 29 ms in bfloat16 and 7.8 ms in float32.
    """
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def default_precision() -> str:
    """The weight precision :func:`load_model` uses when given neither ``precision`` nor
    ``dtype``, chosen by measurement (``bench/bench_local_model.py --precisions``; the
    "Precision" section of ``docs/local-model.md``). CPU: int8, which holds a Q4_1/Q8_0 file's
    weights exactly (float32's logits, bit for bit; other matrices stay float32) and decoded
    faster than float32 in every run (about 1.5x at batch 1, 1.05-2.3x at batch 8 and 32);
    bfloat16 is slower than float32 from batch 8 on. Accelerators: bfloat16 (int8 not yet
    measured there)."""
    return "int8" if jax.default_backend() == "cpu" else "bfloat16"


def resolve_precision(precision: str | None = None, dtype: Any = None) -> tuple[str, Any]:
    """``(precision, compute dtype)`` from :func:`load_model`'s ``precision`` and ``dtype``.

    ``precision`` is ``"float32"``, ``"bfloat16"`` or ``"int8"`` (the file's block-quantized
    matrices held as int8 blocks, :mod:`ember.local._quant`, computed in ``dtype``, by
    default :func:`default_dtype`). ``dtype`` alone keeps its old meaning: the
    weights' floating dtype. Neither: :func:`default_precision`.
    """
    if precision is None:
        if dtype is not None:
            dt = jnp.dtype(dtype)
            return dt.name, dt
        precision = default_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "int8":
        return precision, jnp.dtype(dtype if dtype is not None else default_dtype())
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(precision):
        raise ValueError(f"precision={precision!r} contradicts dtype={jnp.dtype(dtype).name!r}")
    return precision, jnp.dtype(precision)


#: How many meshes keep a replicated copy of the weights (each copy is one per device).
_PLACED_MESHES = 2


class LocalModel:
    """A Llama-architecture GGUF model ready to generate; get one with :func:`load_model`."""

    def __init__(self, path: str | os.PathLike, *, dtype: Any = None, precision: Precision | None = None) -> None:
        path = Path(path)
        contents = read_gguf(path)
        meta = contents.metadata
        self.path = path
        self.metadata = {k: v for k, v in meta.items() if not k.startswith("tokenizer.ggml.")}
        self.config = LlamaConfig.from_metadata(meta, model=str(path))
        self.tokenizer = GGUFTokenizer(meta, model=str(path))
        self.chat_format: ChatFormat = chat_format_from_template(meta.get("tokenizer.chat_template"), model=str(path))
        #: ``"float32"``, ``"bfloat16"`` or ``"int8"`` (weights); ``dtype`` is the compute dtype.
        self.precision, self.dtype = resolve_precision(precision, dtype)
        quantized = partial(quantize_tensor, contents) if self.precision == "int8" else None
        self.params: LlamaParams = params_from_gguf(contents.tensors, self.config, self.dtype, quantized=quantized)
        self.param_bytes = sum(x.nbytes for x in jax.tree.leaves(self.params))
        turn_end = self.tokenizer.token_id(self.chat_format.turn_end.strip())
        self.end_ids = frozenset(self.tokenizer.end_ids | ({turn_end} if turn_end is not None else set()))
        self.default_config = GenerationConfig(
            temperature=float(meta.get("general.sampling.temp", _FALLBACK_TEMPERATURE)),
            top_k=int(meta.get("general.sampling.top_k", 0)),
            top_p=float(meta.get("general.sampling.top_p", _FALLBACK_TOP_P)),
        )
        self.stats = GenerationStats()
        #: Decode steps per jitted chunk: how often the host checks stop strings and deadlines.
        self.decode_chunk = 16
        #: Tokens a call of a long joining prompt prefills, between decode chunks (see serve).
        self.prefill_chunk = PREFILL_CHUNK
        self._lock = threading.Lock()
        #: Weights replicated over the meshes used last (most recent last): a copy per device,
        #: so only the last :data:`_PLACED_MESHES` meshes keep theirs.
        self._placed: dict[Mesh, LlamaParams] = {}

    def __repr__(self) -> str:
        return f"LocalModel({str(self.path)!r}, precision={self.precision}, dtype={self.dtype.name})"

    @property
    def context_window(self) -> int:
        return self.config.context_length

    def encode(self, prompt: Prompt, *, chat: bool = True, assistant_prefix: str = "") -> list[int]:
        """Token ids of ``prompt``: through the chat template when ``chat``, else as raw text.

        A chat prompt is a string (one user turn) or ``{"role", "content"}`` mappings.

        ``assistant_prefix`` starts the assistant's reply, so generation continues it (guided
        decoding forces the JSON around each field this way).
        """
        if not chat:
            if not isinstance(prompt, str):
                raise TypeError("chat=False takes prompt strings")
            return self.tokenizer.encode(prompt)
        return self.tokenizer.encode(self.chat_format.render(normalize_messages(prompt)) + assistant_prefix)

    def generate(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        *,
        chat: bool = True,
        mesh: Mesh | None = None,
        batch_axis: str = "batch",
        deadlines: Sequence[float | None] | None = None,
    ) -> list[Generation]:
        """Continue every prompt in one batched generation.

        ``config`` is one :class:`GenerationConfig` for all prompts or one per prompt
        (default: greedy, 256 new tokens). With ``mesh``, rows are split over its
        ``batch_axis``. ``deadlines`` (``time.monotonic()`` instants, per prompt) stop
        rows with ``finish_reason="timeout"``.
        """
        ids = [self.encode(p, chat=chat) for p in prompts]
        return self.generate_tokens(ids, config, mesh=mesh, batch_axis=batch_axis, deadlines=deadlines)

    def generate_tokens(
        self,
        prompt_ids: Sequence[Sequence[int]],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        *,
        mesh: Mesh | None = None,
        batch_axis: str = "batch",
        deadlines: Sequence[float | None] | None = None,
        on_tokens: Sequence[Callable[[Sequence[int]], None] | None] | None = None,
    ) -> list[Generation]:
        """:meth:`generate` for prompts already tokenized; ``on_tokens``: per-prompt token
        callbacks for streaming (see :class:`ember.local._generate.GenerationRequest`)."""
        configs = _per_prompt(config, len(prompt_ids))
        deadlines = list(deadlines) if deadlines is not None else [None] * len(configs)
        callbacks = list(on_tokens) if on_tokens is not None else [None] * len(configs)
        requests = [GenerationRequest(*fields) for fields in zip(prompt_ids, configs, deadlines, callbacks)]
        return self.serve(requests, mesh=mesh, batch_axis=batch_axis)

    def serve(
        self,
        requests: Sequence[GenerationRequest],
        *,
        mesh: Mesh | None = None,
        batch_axis: str = "batch",
        arrivals: Arrivals | None = None,
        max_rows: int = 32,
        min_mode: str = GREEDY,
    ) -> list[Generation]:
        """Continue ``requests`` as one batched generation that ``arrivals`` may join while it
        runs (continuous batching; see :func:`ember.local._generate.serve`)."""
        with self._lock:
            return serve(
                self._params_on(mesh, batch_axis),
                self.config,
                self.tokenizer,
                requests,
                end_ids=sorted(self.end_ids),
                stats=self.stats,
                mesh=mesh,
                axis=batch_axis,
                chunk=self.decode_chunk,
                prefill_chunk=self.prefill_chunk,
                arrivals=arrivals,
                max_rows=max_rows,
                min_mode=min_mode,
            )

    def next_token_logits(self, prompt_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Float32 logits ``[n, vocab]`` of the token after each prompt, in one padded batch."""
        n = len(prompt_ids)
        t_size = prompt_bucket(max(len(p) for p in prompt_ids))
        tokens = np.full((bucket(n), t_size), self.tokenizer.pad_id, np.int32)
        start = np.full((tokens.shape[0],), t_size - 1, np.int32)
        for i, ids in enumerate(prompt_ids):
            tokens[i, t_size - len(ids) :] = ids
            start[i] = t_size - len(ids)
        with self._lock:
            self.stats.prefill_calls += 1
            return np.asarray(_logits(self.params, tokens, start, config=self.config))[:n]

    def _params_on(self, mesh: Mesh | None, axis: str) -> LlamaParams:
        if mesh is None:
            return self.params
        if axis not in mesh.axis_names:
            raise ValueError(f"mesh has axes {mesh.axis_names}, not the batch axis {axis!r}")
        placed = self._placed.pop(mesh, None)
        if placed is None:
            while len(self._placed) >= _PLACED_MESHES:  # free the least recently used copies
                self._placed.pop(next(iter(self._placed)))
            placed = jax.device_put(self.params, NamedSharding(mesh, PartitionSpec()))
        self._placed[mesh] = placed
        return placed


@partial(jax.jit, static_argnames=("config",))
def _logits(params: LlamaParams, tokens: jax.Array, start: jax.Array, *, config: LlamaConfig) -> jax.Array:
    cache = init_cache(config, tokens.shape[0], tokens.shape[1], params.embed.dtype)
    hidden, _ = forward(params, config, tokens, start, jnp.zeros((), jnp.int32), cache, tokens.shape[1])
    return unembed(params, hidden)


def _per_prompt(config: GenerationConfig | Sequence[GenerationConfig] | None, n: int) -> list[GenerationConfig]:
    if config is None:
        return [GenerationConfig()] * n
    if isinstance(config, GenerationConfig):
        return [config] * n
    configs = list(config)
    if len(configs) != n:
        raise ValueError(f"{n} prompts but {len(configs)} configs")
    return configs


_models: dict[tuple[str, str, str], LocalModel] = {}
_loading: dict[tuple[str, str, str], threading.Lock] = {}
_models_lock = threading.Lock()


def load_model(
    path: str | os.PathLike | None = None, *, dtype: Any = None, precision: Precision | None = None
) -> LocalModel:
    """The model at ``path`` (an embedded model name, a GGUF path, or ``None`` for
    SmolLM2-135M-Instruct), loaded on first use and shared by the whole process, once per
    precision: ``"float32"``, ``"bfloat16"`` or ``"int8"`` (the file's quantized weights as they are; see
    :func:`resolve_precision`), by default :func:`default_precision`.

    Turns on JAX's persistent compilation cache first (:mod:`ember.local._compile_cache`;
    ``EMBER_COMPILE_CACHE=off`` disables it), so a new process reuses compiled programs."""
    ensure_compile_cache()
    resolved = resolve_model_path(path)
    prec, compute = resolve_precision(precision, dtype)
    key = (str(resolved), prec, compute.name)
    with _models_lock:
        model = _models.get(key)
        if model is not None:
            return model
        lock = _loading.setdefault(key, threading.Lock())
    with lock:  # one loader per file; others wait here and then find it cached
        with _models_lock:
            if key in _models:
                return _models[key]
        model = LocalModel(resolved, dtype=compute, precision=prec if prec in PRECISIONS else None)
        with _models_lock:
            _models[key] = model
            _loading.pop(key, None)
        return model
