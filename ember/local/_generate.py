"""Batched generation: padding, shape buckets, a chunked decode loop, stop handling, sharding.

The shape of one generation is the batch ``B`` (rows), the prompt length ``T`` (prompts
left-padded to the longest) and the cache length ``S``. Each is rounded up to a bucket
(powers of two; ``T`` also at 1.5x steps), so a stream of requests of varying lengths
reuses a handful of compiled programs instead of compiling per request: a decode program
takes several seconds to compile on the 2-core dev machine, longer than a short answer
takes to generate.

Identical prompts (an ensemble sampling one prompt N times) are prefilled once and their
KV cache rows are copied, so N samples cost one prompt's prefill plus one batched decode.

Decoding runs in jitted chunks of ``chunk`` steps, a ``lax.while_loop`` that exits as soon
as every row is done. Between chunks the host looks for stop strings and deadlines and
marks rows done. Finished rows stop costing compute in three ways: the loop ends when all
rows are done; attention reads only the cache slots filled so far (``window``, a bucket of
its own); and when the live rows fit a batch bucket half the size or less, and may still
run long enough to repay a compile (``COMPACT_MIN_STEPS``), they are gathered into that
smaller batch.

Sharding: with a ``Mesh``, parameters are replicated and every batch-leading array (tokens,
sampling settings, KV cache) is split over the mesh's batch axis; XLA partitions the same
program, and each row's arithmetic is unchanged, so the tokens equal the unsharded ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ember.local._errors import InvalidGenerationConfigError, PromptTooLongError
from ember.local._llama import KVCache, LlamaConfig, LlamaParams, forward, init_cache, unembed
from ember.local._sampling import FILTER, GREEDY, SAMPLE, SamplingParams, sample, seed_words
from ember.local._tokenizer import GGUFTokenizer

__all__ = ["Generation", "GenerationConfig", "GenerationStats", "bucket", "generate_tokens", "prompt_bucket"]

MIN_PROMPT_BUCKET = 16
MIN_CACHE_BUCKET = 64
# Shrink the batch to a smaller bucket only when a live row may still need this many
# steps: the smaller shape is a new decode program (seconds to compile on the dev machine).
COMPACT_MIN_STEPS = 64


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How to continue one prompt. ``temperature=0`` is greedy; ``top_k=0`` and ``top_p=1``
    switch those filters off; ``seed`` (any int, used mod 2**64) fixes the draws."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    #: Keep generating through end-of-turn tokens (benchmarks want fixed-length rows).
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        """Reject out-of-range settings here, at construction, not deep inside a batch."""
        if self.max_new_tokens < 1:
            raise InvalidGenerationConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidGenerationConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidGenerationConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InvalidGenerationConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise InvalidGenerationConfigError("stop strings must be non-empty")

    @property
    def filters(self) -> bool:
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1)


@dataclasses.dataclass(frozen=True)
class Generation:
    """One prompt's continuation. ``finish_reason``: ``"stop"`` (end-of-turn token or stop
    string), ``"length"`` (``max_new_tokens`` or the context window) or ``"timeout"``."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclasses.dataclass
class GenerationStats:
    """Work counters of one model, for tests and benchmarks (updated under the model's lock)."""

    generate_calls: int = 0  # batched generations
    rows: int = 0  # prompts continued
    prefill_calls: int = 0  # batched prompt forwards
    decode_chunks: int = 0  # jitted decode-loop calls
    decode_steps: int = 0  # batched one-token forwards
    compactions: int = 0  # times finished rows were dropped to a smaller batch
    generated_tokens: int = 0

    @property
    def forward_calls(self) -> int:
        return self.prefill_calls + self.decode_steps


class DecodeState(NamedTuple):
    cache: KVCache
    token: jax.Array  # [B] last sampled token, fed at the next step
    start: jax.Array  # [B] first cache slot of the row's real tokens
    slot: jax.Array  # [] cache slot the next fed token is written to
    generated: jax.Array  # [B] tokens sampled so far
    done: jax.Array  # [B]


def bucket(n: int, minimum: int = 1, multiple: int = 1) -> int:
    """The smallest power of two >= max(n, minimum), rounded up to a multiple of ``multiple``."""
    size = max(minimum, 1 << max(n - 1, 0).bit_length())
    return -(-size // multiple) * multiple


def prompt_bucket(n: int) -> int:
    """Padded prompt length: the smallest of 16, 24, 32, 48, 64, 96, ... (powers of two and
    1.5x powers of two) that holds ``n``. Prefill costs every padded token, and chat
    prompts cluster just above powers of two (SmolLM2's template alone is ~30 tokens), so
    the half steps cut the padding waste from up to 50% to up to 33%."""
    size = bucket(n, MIN_PROMPT_BUCKET)
    return size * 3 // 4 if size > MIN_PROMPT_BUCKET and n <= size * 3 // 4 else size


def _batch_spec(mesh: Mesh | None, axis: str, ndim: int, dim: int = 0) -> NamedSharding | None:
    if mesh is None:
        return None
    spec = [None] * ndim
    spec[dim] = axis
    return NamedSharding(mesh, PartitionSpec(*spec))


def _constrain(x: jax.Array, mesh: Mesh | None, axis: str, dim: int = 0) -> jax.Array:
    spec = _batch_spec(mesh, axis, x.ndim, dim)
    return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def _constrain_state(state: DecodeState, mesh: Mesh | None, axis: str) -> DecodeState:
    """Pin the batch dimension of every per-row array (and of the cache) to the mesh axis."""
    if mesh is None:
        return state
    cache = KVCache(*(_constrain(c, mesh, axis, dim=1) for c in state.cache))
    rows = {f: _constrain(getattr(state, f), mesh, axis) for f in ("token", "start", "generated", "done")}
    return state._replace(cache=cache, **rows)


def _finished(token: jax.Array, generated: jax.Array, sampling: SamplingParams, end_ids: jax.Array) -> jax.Array:
    is_end = jnp.any(token[:, None] == end_ids[None, :], axis=-1) & sampling.use_eos
    return is_end | (generated >= sampling.max_new)


@partial(jax.jit, static_argnames=("config", "cache_len", "mode", "mesh", "axis"))
def _prefill(
    params: LlamaParams,
    tokens: jax.Array,
    start: jax.Array,
    row_map: jax.Array,
    sampling: SamplingParams,
    end_ids: jax.Array,
    *,
    config: LlamaConfig,
    cache_len: int,
    mode: str,
    mesh: Mesh | None,
    axis: str,
) -> tuple[DecodeState, jax.Array]:
    """Prefill the unique prompts ``tokens [U, T]``, copy them to rows (``row_map [B]``) and
    sample every row's first token."""
    cache = init_cache(config, tokens.shape[0], cache_len, params.embed.dtype)
    hidden, cache = forward(params, config, tokens, start, jnp.zeros((), jnp.int32), cache, tokens.shape[1])
    logits = unembed(params, hidden)[row_map]
    cache = KVCache(cache.k[:, row_map], cache.v[:, row_map])
    generated = jnp.zeros(row_map.shape, jnp.int32)
    token = sample(logits, sampling, generated, mode=mode)
    generated = generated + 1
    state = DecodeState(
        cache=cache,
        token=token,
        start=start[row_map],
        slot=jnp.asarray(tokens.shape[1], jnp.int32),
        generated=generated,
        done=_finished(token, generated, sampling, end_ids),
    )
    return _constrain_state(state, mesh, axis), token


@partial(jax.jit, static_argnames=("config", "chunk", "window", "mode", "mesh", "axis"), donate_argnames=("state",))
def _decode(
    params: LlamaParams,
    state: DecodeState,
    sampling: SamplingParams,
    end_ids: jax.Array,
    *,
    config: LlamaConfig,
    chunk: int,
    window: int,
    mode: str,
    mesh: Mesh | None,
    axis: str,
) -> tuple[DecodeState, jax.Array, jax.Array]:
    """Up to ``chunk`` decode steps; stops early once every row is done. Attention reads the
    first ``window`` cache slots (``>= slot + chunk``, or the whole cache). Returns the new
    state, the tokens ``[B, chunk]`` (-1 where a row was already done) and the step count."""

    def live(carry):
        step, st, _ = carry
        return (step < chunk) & ~jnp.all(st.done)

    def step_fn(carry):
        step, st, out = carry
        hidden, cache = forward(params, config, st.token[:, None], st.start, st.slot, st.cache, window)
        token = sample(unembed(params, hidden), sampling, st.generated, mode=mode)
        token = jnp.where(st.done, -1, token)
        generated = st.generated + (~st.done).astype(jnp.int32)
        done = st.done | _finished(token, generated, sampling, end_ids)
        st = DecodeState(cache, jnp.where(st.done, st.token, token), st.start, st.slot + 1, generated, done)
        return step + 1, st, out.at[:, step].set(token)

    out = jnp.full((state.token.shape[0], chunk), -1, jnp.int32)
    steps, state, out = jax.lax.while_loop(live, step_fn, (jnp.zeros((), jnp.int32), state, out))
    return _constrain_state(state, mesh, axis), out, steps


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


@dataclasses.dataclass
class _Row:
    """Host-side bookkeeping of one real row."""

    prompt_len: int
    config: GenerationConfig
    max_new: int
    deadline: float | None
    tokens: list[int] = dataclasses.field(default_factory=list)
    finish: str | None = None
    cut: int | None = None  # character index of the first stop string


def generate_tokens(
    params: LlamaParams,
    config: LlamaConfig,
    tokenizer: GGUFTokenizer,
    prompt_ids: Sequence[Sequence[int]],
    configs: Sequence[GenerationConfig],
    *,
    end_ids: Sequence[int],
    stats: GenerationStats,
    mesh: Mesh | None = None,
    axis: str = "batch",
    deadlines: Sequence[float | None] | None = None,
    chunk: int = 16,
    on_tokens: Sequence[Callable[[Sequence[int]], None] | None] | None = None,
) -> list[Generation]:
    """Continue each prompt (token ids) under its own config, as one batched generation.

    ``end_ids`` are the end-of-turn tokens; ``max_new_tokens`` is clipped to the context
    window. ``deadlines`` are ``time.monotonic()`` instants after which a row stops with
    ``finish_reason="timeout"``. Parameters must already be placed (replicated on ``mesh``).
    ``on_tokens`` (one per prompt, or None) are called on this thread after the prefill and
    after every decode chunk in which their row gained tokens, with the row's token ids so far
    (raw: they may run past a stop string or end with an end-of-turn token); for streaming.
    """
    n = len(prompt_ids)
    if n == 0:
        return []
    if len(configs) != n:
        raise ValueError(f"{n} prompts but {len(configs)} configs")
    deadlines = list(deadlines) if deadlines is not None else [None] * n
    rows = []
    for ids, cfg, deadline in zip(prompt_ids, configs, deadlines):
        if not ids:
            raise ValueError("cannot continue an empty prompt")
        room = config.context_length - len(ids)
        if room < 1:
            raise PromptTooLongError(len(ids), config.context_length)
        rows.append(_Row(len(ids), cfg, min(cfg.max_new_tokens, room), deadline))

    devices = 1 if mesh is None else mesh.shape[axis]
    unique: dict[tuple[int, ...], int] = {}
    row_map = [unique.setdefault(tuple(ids), len(unique)) for ids in prompt_ids]
    u_size = bucket(len(unique), multiple=devices)
    b_size = bucket(n, multiple=devices)
    t_size = prompt_bucket(max(len(ids) for ids in unique))
    s_size = bucket(t_size + max(r.max_new for r in rows), MIN_CACHE_BUCKET)

    tokens = np.full((u_size, t_size), tokenizer.pad_id, np.int32)
    start = np.full((u_size,), t_size - 1, np.int32)  # padding rows: one (pad) token
    for ids, u in unique.items():
        tokens[u, t_size - len(ids) :] = ids
        start[u] = t_size - len(ids)
    pad = b_size - n  # padding rows stop after their first token
    row_map_arr = np.asarray(row_map + [0] * pad, np.int32)
    put = (lambda x: x) if mesh is None else (lambda x: jax.device_put(x, _batch_spec(mesh, axis, x.ndim)))
    sampling = SamplingParams(*(put(x) for x in _sampling_arrays(rows, pad)))
    end = np.asarray(sorted(end_ids) or [-1], np.int32)
    static = {"config": config, "mode": _mode(rows), "mesh": mesh, "axis": axis}

    stats.generate_calls += 1
    stats.rows += n
    stats.prefill_calls += 1
    state, first = _prefill(
        params, put(tokens), put(start), put(row_map_arr), sampling, end, cache_len=s_size, **static
    )
    placed: list[_Row | None] = [*rows, *[None] * pad]  # the row behind each batch position
    reported = [0] * n  # tokens each row's on_tokens has seen
    new_tokens = np.asarray(first)[:, None]
    slot = t_size  # cache slot of the next fed token
    while True:
        _absorb(placed, new_tokens, np.asarray(state.done), tokenizer, end_ids)
        if on_tokens is not None:
            _report(rows, on_tokens, reported)
        now = time.monotonic()
        for r in rows:
            if r.finish is None and r.deadline is not None and now >= r.deadline:
                r.finish = "timeout"
        live = [i for i, r in enumerate(placed) if r is not None and r.finish is None]
        if not live:
            break
        smaller = bucket(len(live), multiple=devices)
        if smaller < len(placed) and max(placed[i].max_new - len(placed[i].tokens) for i in live) >= COMPACT_MIN_STEPS:
            keep = np.asarray(live + [live[0]] * (smaller - len(live)), np.int32)
            state, sampling = _compact(state, sampling, keep, np.arange(smaller) < len(live), mesh=mesh, axis=axis)
            placed = [placed[i] for i in live] + [None] * (smaller - len(live))
            stats.compactions += 1
        host_done = np.asarray([r is None or r.finish is not None for r in placed])
        if (host_done != np.asarray(state.done)).any():
            state = state._replace(done=host_done if mesh is None else jax.device_put(host_done, state.done.sharding))
        window = min(bucket(slot + chunk, MIN_CACHE_BUCKET), s_size)
        state, out, steps = _decode(params, state, sampling, end, chunk=chunk, window=window, **static)
        new_tokens, steps = np.asarray(out), int(steps)
        slot += steps
        stats.decode_chunks += 1
        stats.decode_steps += steps
    results = [_result(r, tokenizer, end_ids) for r in rows]
    stats.generated_tokens += sum(g.completion_tokens for g in results)
    return results


def _report(rows: list[_Row], on_tokens: Sequence[Callable[[Sequence[int]], None] | None], seen: list[int]) -> None:
    """Tell each streaming row's callback of its new tokens (callbacks must not raise)."""
    for i, (r, callback) in enumerate(zip(rows, on_tokens)):
        if callback is not None and len(r.tokens) > seen[i]:
            seen[i] = len(r.tokens)
            callback(tuple(r.tokens))


def _sampling_arrays(rows: list[_Row], pad: int) -> SamplingParams:
    """Host arrays of the rows' sampling settings, plus ``pad`` greedy one-token rows."""
    return SamplingParams(
        temperature=np.asarray([r.config.temperature for r in rows] + [0.0] * pad, np.float32),
        top_k=np.asarray([r.config.top_k for r in rows] + [0] * pad, np.int32),
        top_p=np.asarray([r.config.top_p for r in rows] + [1.0] * pad, np.float32),
        seed=np.asarray([seed_words(r.config.seed) for r in rows] + [(0, 0)] * pad, np.uint32).reshape(-1, 2),
        max_new=np.asarray([r.max_new for r in rows] + [1] * pad, np.int32),
        use_eos=np.asarray([not r.config.ignore_eos for r in rows] + [True] * pad, bool),
    )


def _mode(rows: list[_Row]) -> str:
    """The cheapest sampling program that serves every row."""
    if any(r.config.filters for r in rows):
        return FILTER
    return SAMPLE if any(r.config.temperature > 0 for r in rows) else GREEDY


@partial(jax.jit, static_argnames=("mesh", "axis"))
def _compact(
    state: DecodeState, sampling: SamplingParams, keep: jax.Array, live: jax.Array, *, mesh: Mesh | None, axis: str
) -> tuple[DecodeState, SamplingParams]:
    """Keep batch rows ``keep`` (a smaller batch); positions where ``live`` is false are
    padding and count as done."""
    cache = KVCache(state.cache.k[:, keep], state.cache.v[:, keep])
    state = DecodeState(
        cache, state.token[keep], state.start[keep], state.slot, state.generated[keep], state.done[keep] | ~live
    )
    sampling = SamplingParams(*(_constrain(x[keep], mesh, axis) for x in sampling))
    return _constrain_state(state, mesh, axis), sampling


def _absorb(
    placed: list[_Row | None], new_tokens: np.ndarray, done: np.ndarray, tokenizer: GGUFTokenizer, end_ids: Sequence[int]
) -> None:
    """Append a chunk's tokens (``[batch, steps]``) to the live rows; settle rows that the
    device or a stop string finished."""
    for b, r in enumerate(placed):
        if r is None or r.finish is not None:
            continue
        r.tokens.extend(int(t) for t in new_tokens[b] if t >= 0)
        if r.config.stop:
            cut = _first_stop(tokenizer.decode(_text_tokens(r, end_ids)), r.config.stop)
            if cut is not None:
                r.finish, r.cut = "stop", cut
                continue
        if done[b]:
            ended = r.tokens[-1] in end_ids and not r.config.ignore_eos
            r.finish = "stop" if ended else "length"


def _text_tokens(r: _Row, end_ids: Sequence[int]) -> list[int]:
    if r.tokens and r.tokens[-1] in end_ids and not r.config.ignore_eos:
        return r.tokens[:-1]
    return r.tokens


def _result(r: _Row, tokenizer: GGUFTokenizer, end_ids: Sequence[int]) -> Generation:
    tokens = r.tokens
    text = tokenizer.decode(_text_tokens(r, end_ids))
    if r.cut is not None:
        text = text[: r.cut]
        stop = r.config.stop
        # Count the tokens up to the one that completed the stop string (the rest were
        # computed in the same chunk but are not part of the answer).
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if _first_stop(tokenizer.decode(tokens[:mid]), stop) is not None:
                hi = mid
            else:
                lo = mid + 1
        tokens = tokens[:lo]
    return Generation(text=text, token_ids=tuple(tokens), prompt_tokens=r.prompt_len, finish_reason=r.finish or "length")
