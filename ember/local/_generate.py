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

Continuous batching: a generation may be given ``arrivals`` (the micro-batcher's queue).
Between chunks, waiting requests *join* it: each takes a free batch row (a finished row, a
padding row, or a row added by growing the batch to the next bucket), its prompt is
prefilled on its own and its keys and values are written into that row's cache just below
the shared write slot, so from the next chunk on it decodes with the others. Rows carry
their own ``start``, so positions and masks stay per row whatever the row held before. A
prompt longer than ``PREFILL_CHUNK`` tokens prefills that many at a time, one chunk between
decode chunks (each chunk attends to the earlier ones in its scratch cache), so the rows
already decoding wait for a chunk, never for a whole long prompt. A request joins when its
prompt fits below the slot and its answer fits in the cache left, counting the decode chunks
its prefill lets run; otherwise it waits for the next generation. Each row's result is handed over
(``on_done``) the moment it finishes, not when the batch ends.

Sharding: with a ``Mesh``, parameters are replicated and every batch-leading array (tokens,
sampling settings, KV cache) is split over the mesh's batch axis; XLA partitions the same
program, and each row's arithmetic is unchanged, so the tokens equal the unsharded ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ember.local._errors import InvalidGenerationConfigError, PromptTooLongError
from ember.local._llama import KVCache, LlamaConfig, LlamaParams, forward, init_cache, unembed
from ember.local._sampling import FILTER, GREEDY, SAMPLE, SamplingParams, sample, seed_words
from ember.local._tokenizer import GGUFTokenizer

__all__ = [
    "Arrivals",
    "Generation",
    "GenerationConfig",
    "GenerationRequest",
    "GenerationStats",
    "attention_window",
    "bucket",
    "prompt_bucket",
    "serve",
]

MIN_PROMPT_BUCKET = 16
MIN_CACHE_BUCKET = 64
# Shrink the batch to a smaller bucket only when a live row may still need this many
# steps: the smaller shape is a new decode program (seconds to compile on the dev machine).
COMPACT_MIN_STEPS = 8
#: A joining prompt longer than this prefills this many tokens at a time, one chunk between
#: decode chunks, so the rows decoding wait for a chunk, not for the whole prompt.
PREFILL_CHUNK = 128


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
    string), ``"length"`` (``max_new_tokens`` or the context window), ``"timeout"``, or
    ``"cancelled"`` (its request was abandoned while it generated)."""

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
    growths: int = 0  # times a running batch grew to a larger bucket for joining rows
    joined_rows: int = 0  # requests that joined a running generation
    join_calls: int = 0  # batched prefills of joining requests
    prefill_chunks: int = 0  # forwards over one chunk of long joining prompts
    generated_tokens: int = 0
    row_steps: int = 0  # batch rows x decode steps: the decode work paid for
    decoded_tokens: int = 0  # tokens those steps produced for live rows

    @property
    def occupancy(self) -> float:
        """Share of the decode work that produced a token (1.0: no idle rows)."""
        return self.decoded_tokens / self.row_steps if self.row_steps else 0.0

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


def attention_window(slot: int, chunk: int, cache_len: int) -> int:
    """Cache slots a decode chunk's attention reads when its first token is written at
    ``slot``: the bucket of ``slot + chunk`` (at least 64; 1.5x steps, like prompts), at most
    the cache. The half steps matter once contexts grow: a chunk starting at slot 1040 reads
    1536 slots, not 2048."""
    return min(max(prompt_bucket(slot + chunk), MIN_CACHE_BUCKET), cache_len)


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


@partial(jax.jit, static_argnames=("config",))
def _prompts(params: LlamaParams, tokens: jax.Array, start: jax.Array, *, config: LlamaConfig) -> tuple[jax.Array, KVCache]:
    """The unique prompts ``tokens [U, T]`` (real tokens from ``start [U]``) run at slots
    ``0 .. T-1`` of a scratch cache: each one's final hidden state ``[U, D]``, and its keys
    and values. New generations (:func:`_begin`) and joining requests (:func:`_join`) both
    start here, so the costly program to compile, the forward pass over prompts, is one per
    ``(U, T)`` whatever batch and cache it then feeds."""
    u, t = tokens.shape
    scratch = init_cache(config, u, t, params.embed.dtype)
    return forward(params, config, tokens, start, jnp.zeros((), jnp.int32), scratch, t)


@partial(jax.jit, static_argnames=("config",), donate_argnames=("scratch",))
def _prompt_chunk(
    params: LlamaParams, tokens: jax.Array, start: jax.Array, slot: jax.Array, scratch: KVCache, *, config: LlamaConfig
) -> tuple[jax.Array, KVCache]:
    """Slots ``slot .. slot+C-1`` of prompts prefilled a chunk at a time: the chunk's tokens
    ``[U, C]`` attend to the earlier chunks in ``scratch`` (``[.., U, .., T, ..]``); after the
    last chunk the result is :func:`_prompts`' for the whole prompts, up to float rounding."""
    return forward(params, config, tokens, start, slot, scratch, scratch.k.shape[3])


@partial(jax.jit, static_argnames=("cache_len", "mode", "mesh", "axis"))
def _begin(
    params: LlamaParams,
    hidden: jax.Array,
    scratch: KVCache,
    start: jax.Array,
    row_map: jax.Array,
    sampling: SamplingParams,
    end_ids: jax.Array,
    *,
    cache_len: int,
    mode: str,
    mesh: Mesh | None,
    axis: str,
) -> tuple[DecodeState, jax.Array]:
    """A new generation from prompts run by :func:`_prompts`: row ``b`` gets prompt
    ``row_map[b]`` in a cache of ``cache_len`` slots, and every row's first token is sampled."""
    t = scratch.k.shape[3]
    room = ((0, 0), (0, 0), (0, 0), (0, cache_len - t), (0, 0))
    cache = KVCache(jnp.pad(scratch.k[:, row_map], room), jnp.pad(scratch.v[:, row_map], room))
    logits = unembed(params, hidden)[row_map]
    generated = jnp.zeros(row_map.shape, jnp.int32)
    token = sample(logits, sampling, generated, mode=mode)
    generated = generated + 1
    state = DecodeState(
        cache=cache,
        token=token,
        start=start[row_map],
        slot=jnp.asarray(t, jnp.int32),
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


@partial(jax.jit, static_argnames=("mode", "mesh", "axis"), donate_argnames=("state",))
def _join(
    params: LlamaParams,
    state: DecodeState,
    hidden: jax.Array,
    scratch: KVCache,
    start: jax.Array,
    row_map: jax.Array,
    rows: jax.Array,
    sampling: SamplingParams,
    end_ids: jax.Array,
    *,
    mode: str,
    mesh: Mesh | None,
    axis: str,
) -> tuple[DecodeState, jax.Array]:
    """Put joining prompts, run by :func:`_prompts`, into batch rows ``rows [J]`` of a
    running generation (joiner ``j`` has prompt ``row_map[j]``) and sample their first tokens.

    The prompts ran at slots ``0 .. T-1`` of a scratch cache; their keys and values are
    copied to slots ``slot-T .. slot-1`` of their rows, so each prompt ends right below the
    shared write slot and its first token is fed at ``slot`` like every other row's next
    token. Keys carry their rotary position (``slot - start``), which the copy preserves."""
    t = scratch.k.shape[3]
    j = row_map.shape[0]
    scratch = KVCache(scratch.k[:, row_map], scratch.v[:, row_map])
    below = state.slot - t

    def place(cache: jax.Array, new: jax.Array) -> jax.Array:  # [L, B, H, S, D] <- [L, J, H, T, D]
        zero = jnp.zeros((), jnp.int32)
        written = jax.lax.dynamic_update_slice(cache[:, rows], new.astype(cache.dtype), (zero, zero, zero, below, zero))
        return cache.at[:, rows].set(written)

    cache = KVCache(place(state.cache.k, scratch.k), place(state.cache.v, scratch.v))
    mine = SamplingParams(*(x[rows] for x in sampling))
    first = sample(unembed(params, hidden)[row_map], mine, jnp.zeros((j,), jnp.int32), mode=mode)
    one = jnp.ones((j,), jnp.int32)
    joined = DecodeState(
        cache=cache,
        token=state.token.at[rows].set(first),
        start=state.start.at[rows].set(below + start[row_map]),
        slot=state.slot,
        generated=state.generated.at[rows].set(one),
        done=state.done.at[rows].set(_finished(first, one, mine, end_ids)),
    )
    return _constrain_state(joined, mesh, axis), first


@partial(jax.jit, static_argnames=("mesh", "axis"))
def _relayout(state: DecodeState, keep: jax.Array, live: jax.Array, *, mesh: Mesh | None, axis: str) -> DecodeState:
    """The batch rows ``keep``, in that order (a smaller batch, or a larger one with rows to
    fill); positions where ``live`` is false count as done."""
    cache = KVCache(state.cache.k[:, keep], state.cache.v[:, keep])
    state = DecodeState(
        cache, state.token[keep], state.start[keep], state.slot, state.generated[keep], state.done[keep] | ~live
    )
    return _constrain_state(state, mesh, axis)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One prompt (token ids) to continue, and where its tokens and its result go.

    ``on_tokens`` is called with the row's token ids so far after the prefill and after every
    decode chunk in which it gained tokens (raw: they may run past a stop string or end with
    an end-of-turn token); ``on_done`` gets the :class:`Generation` as soon as the row
    finishes. Both run on the generating thread and must not raise. ``abandoned`` is asked
    after every chunk; once it says yes the row stops (``finish_reason="cancelled"``) and its
    place goes to the next request."""

    prompt_ids: Sequence[int]
    config: GenerationConfig = GenerationConfig()
    deadline: float | None = None
    on_tokens: Callable[[Sequence[int]], None] | None = None
    on_done: Callable[[Generation], None] | None = None
    abandoned: Callable[[], bool] | None = None


class Arrivals(Protocol):
    """Requests that may join a running generation (the micro-batcher's queue)."""

    def take(self, fits: Callable[[Sequence[int], GenerationConfig], bool], limit: int) -> list[GenerationRequest]:
        """Up to ``limit`` waiting requests for which ``fits(prompt_ids, config)`` holds, in
        arrival order; the rest keep waiting."""
        ...


@dataclasses.dataclass
class _Row:
    """Host-side bookkeeping of one real row."""

    request: GenerationRequest
    max_new: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    finish: str | None = None
    cut: int | None = None  # character index of the first stop string
    reported: int = 0  # tokens on_tokens has seen
    result: Generation | None = None

    @property
    def config(self) -> GenerationConfig:
        return self.request.config


def _row(request: GenerationRequest, context_length: int) -> _Row:
    ids = request.prompt_ids
    if not ids:
        raise ValueError("cannot continue an empty prompt")
    room = context_length - len(ids)
    if room < 1:
        raise PromptTooLongError(len(ids), context_length)
    return _Row(request, min(request.config.max_new_tokens, room))


def _prefill_width(n: int, chunk: int) -> int:
    """Cache slots a joining prompt of ``n`` tokens takes: its bucket, rounded up to whole
    chunks when it prefills in chunks."""
    t = prompt_bucket(n)
    return t if t <= chunk else -(-t // chunk) * chunk


@dataclasses.dataclass(eq=False)
class _Prefill:
    """Joining prompts of one width (:func:`_prefill_width`) on their way into a running
    batch. Up to ``chunk`` slots they prefill in one call (:func:`_prompts`); longer, they
    prefill ``chunk`` slots a call (:func:`_prompt_chunk`), one call between decode chunks."""

    rows: list[_Row]
    tokens: np.ndarray  # [U, T]
    start: np.ndarray  # [U]
    row_map: list[int]
    chunk: int
    done: int = 0  # slots prefilled
    hidden: jax.Array | None = None
    scratch: KVCache | None = None

    @property
    def calls_left(self) -> int:
        return -(-(self.tokens.shape[1] - self.done) // self.chunk)  # a short prompt: one call

    @property
    def chunked(self) -> bool:
        return self.tokens.shape[1] > self.chunk

    def advance(self, params: LlamaParams, config: LlamaConfig, stats: GenerationStats) -> None:
        """One prefill call."""
        width = self.tokens.shape[1]
        if not self.chunked:
            self.hidden, self.scratch = _prompts(params, self.tokens, self.start, config=config)
            self.done = width
            return
        if self.scratch is None:
            self.scratch = init_cache(config, self.tokens.shape[0], width, params.embed.dtype)
        part = self.tokens[:, self.done : self.done + self.chunk]
        at = np.asarray(self.done, np.int32)
        self.hidden, self.scratch = _prompt_chunk(params, part, self.start, at, self.scratch, config=config)
        self.done += self.chunk
        stats.prefill_chunks += 1


def _prefills(rows: Sequence[_Row], pad_id: int, chunk: int) -> list[_Prefill]:
    """The joining ``rows`` in one :class:`_Prefill` per width (a short prompt is not padded
    to a long one's length)."""
    by_width: dict[int, list[_Row]] = {}
    for r in rows:
        by_width.setdefault(_prefill_width(len(r.request.prompt_ids), chunk), []).append(r)
    prefills = []
    for width, group in by_width.items():
        tokens, start, row_map = _pack([r.request.prompt_ids for r in group], pad_id, width=width)
        prefills.append(_Prefill(group, tokens, start, row_map, chunk))
    return prefills


def serve(
    params: LlamaParams,
    config: LlamaConfig,
    tokenizer: GGUFTokenizer,
    requests: Sequence[GenerationRequest],
    *,
    end_ids: Sequence[int],
    stats: GenerationStats,
    mesh: Mesh | None = None,
    axis: str = "batch",
    chunk: int = 16,
    arrivals: Arrivals | None = None,
    max_rows: int = 32,
    min_mode: str = GREEDY,
    prefill_chunk: int = PREFILL_CHUNK,
) -> list[Generation]:
    """Continue ``requests`` as one batched generation; returns their generations in order.

    ``end_ids`` are the end-of-turn tokens; ``max_new_tokens`` is clipped to the context
    window. A request's ``deadline`` (a ``time.monotonic()`` instant) stops its row with
    ``finish_reason="timeout"``. Parameters must already be placed (replicated on ``mesh``).
    With ``arrivals``, requests that arrive while this runs join it, up to ``max_rows`` live
    rows; their results reach them only through their ``on_done``, and a joining prompt longer
    than ``prefill_chunk`` tokens prefills that many at a time between decode chunks. ``min_mode`` is the least
    sampling program to run (``SAMPLE`` serves greedy rows too, exactly): a server whose
    batches mix greedy and sampled requests then compiles one program per shape, not two.
    """
    if not requests:
        return []
    rows = [_row(r, config.context_length) for r in requests]
    n = len(rows)
    devices = 1 if mesh is None else mesh.shape[axis]
    b_size = bucket(n, multiple=devices)
    tokens, start, row_map = _pack([r.request.prompt_ids for r in rows], tokenizer.pad_id, devices)
    t_size = tokens.shape[1]
    s_size = bucket(t_size + max(r.max_new for r in rows), MIN_CACHE_BUCKET)
    row_map_arr = np.asarray(row_map + [0] * (b_size - n), np.int32)
    put = (lambda x: x) if mesh is None else (lambda x: jax.device_put(x, _batch_spec(mesh, axis, x.ndim)))
    placed: list[_Row | None] = [*rows, *[None] * (b_size - n)]  # the row behind each batch position
    sampling = SamplingParams(*(put(x) for x in _sampling_arrays(placed)))
    end = np.asarray(sorted(end_ids) or [-1], np.int32)
    static = {"mode": _mode(rows, min_mode), "mesh": mesh, "axis": axis}

    stats.generate_calls += 1
    stats.rows += n
    stats.prefill_calls += 1
    hidden, scratch = _prompts(params, put(tokens), put(start), config=config)
    state, first = _begin(
        params, hidden, scratch, put(start), put(row_map_arr), sampling, end, cache_len=s_size, **static
    )
    new_tokens = np.asarray(first)[:, None]
    slot = t_size  # cache slot of the next fed token

    pending: list[_Prefill] = []  # joining prompts still prefilling, oldest first
    ahead = 0  # prefill calls queued before the next joiner's last one

    def fits(ids: Sequence[int], cfg: GenerationConfig) -> bool:
        """A joining prompt must end below the write slot, and its answer fit in the cache
        after the decode chunks that may run while it and the chunked prompts before it
        prefill."""
        nonlocal ahead
        width = _prefill_width(len(ids), prefill_chunk)
        max_new = min(cfg.max_new_tokens, config.context_length - len(ids))
        calls = -(-width // prefill_chunk) if width > prefill_chunk else 0  # 0: joins at once
        waits = (ahead + calls - 1) * chunk if calls else 0
        ok = width <= slot and slot + waits + max_new <= s_size
        ahead += calls if ok else 0
        return ok

    prefilled = False  # a chunk of a long prompt ran since the last decode chunk
    while True:
        _absorb(placed, new_tokens, np.asarray(state.done), tokenizer, end_ids)
        now = time.monotonic()
        for r in [*placed, *(r for p in pending for r in p.rows)]:
            if r is None or r.finish is not None:
                continue
            if r.request.abandoned is not None and r.request.abandoned():
                r.finish = "cancelled"
            elif r.request.deadline is not None and now >= r.request.deadline:
                r.finish = "timeout"
        dropped = [p for p in pending if all(r.finish is not None for r in p.rows)]  # prefill no more
        pending = [p for p in pending if any(r.finish is None for r in p.rows)]
        _report([*placed, *(r for p in dropped for r in p.rows)], tokenizer, end_ids, stats)
        live = [i for i, r in enumerate(placed) if r is not None and r.finish is None]
        room = max_rows - len(live) - sum(len(p.rows) for p in pending)
        if arrivals is not None and room > 0:
            ahead = sum(p.calls_left for p in pending if p.chunked)
            taken = arrivals.take(fits, room)
            pending.extend(_prefills([_row(r, config.context_length) for r in taken], tokenizer.pad_id, prefill_chunk))
        for p in pending:  # short prompts whole, and one chunk of the oldest long one
            if not p.chunked:
                p.advance(params, config, stats)
            elif not prefilled:
                p.advance(params, config, stats)
                prefilled = True
        ready = [p for p in pending if p.calls_left == 0]
        if ready:
            pending = [p for p in pending if p.calls_left > 0]
            joined = [r for p in ready for r in p.rows]
            placed, state = _grow(placed, state, live, len(joined), devices, stats, mesh=mesh, axis=axis)
            static["mode"] = _mode(joined, static["mode"])
            sampling, state, new_tokens = _admit(params, state, placed, ready, end, put, stats, **static)
            rows.extend(joined)
            continue
        if not live:
            if pending:  # nothing decodes: the next chunk may run at once
                prefilled = False
                continue
            break
        smaller = bucket(len(live), multiple=devices)
        if smaller < len(placed) and max(placed[i].max_new - len(placed[i].tokens) for i in live) >= COMPACT_MIN_STEPS:
            keep = live + [live[0]] * (smaller - len(live))
            state = _relayout(state, np.asarray(keep, np.int32), np.arange(smaller) < len(live), mesh=mesh, axis=axis)
            placed = [placed[i] for i in live] + [None] * (smaller - len(live))
            sampling = SamplingParams(*(put(x) for x in _sampling_arrays(placed)))
            stats.compactions += 1
        host_done = np.asarray([r is None or r.finish is not None for r in placed])
        if (host_done != np.asarray(state.done)).any():
            state = state._replace(done=host_done if mesh is None else jax.device_put(host_done, state.done.sharding))
        window = attention_window(slot, chunk, s_size)
        state, out, steps = _decode(params, state, sampling, end, config=config, chunk=chunk, window=window, **static)
        new_tokens, steps = np.asarray(out), int(steps)
        slot += steps
        prefilled = False
        stats.decode_chunks += 1
        stats.decode_steps += steps
        stats.row_steps += steps * len(placed)
        stats.decoded_tokens += int((new_tokens >= 0).sum())
    stats.generated_tokens += sum(r.result.completion_tokens for r in rows if r.result is not None)
    return [r.result for r in rows[:n]]


def _grow(
    placed: list[_Row | None],
    state: DecodeState,
    live: list[int],
    joining: int,
    devices: int,
    stats: GenerationStats,
    *,
    mesh: Mesh | None,
    axis: str,
) -> tuple[list[_Row | None], DecodeState]:
    """Make room for ``joining`` rows: the batch as is when it has that many free rows, else
    the live rows moved into the next batch bucket that holds them all."""
    if len(placed) - len(live) >= joining:
        return placed, state
    size = bucket(len(live) + joining, multiple=devices)
    keep = live + [live[0] if live else 0] * (size - len(live))  # the filler rows start as done
    state = _relayout(state, np.asarray(keep, np.int32), np.arange(size) < len(live), mesh=mesh, axis=axis)
    stats.growths += 1
    return [placed[i] for i in live] + [None] * (size - len(live)), state


def _pack(
    prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 1, width: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The unique prompts, left-padded to their bucket (or ``width``): tokens ``[U, T]``, the
    first real slot of each ``[U]`` (padding rows: one pad token), and each prompt's row
    among them. Identical prompts (an ensemble's samples) are prefilled once."""
    unique: dict[tuple[int, ...], int] = {}
    row_map = [unique.setdefault(tuple(ids), len(unique)) for ids in prompts]
    t_size = width or prompt_bucket(max(len(ids) for ids in unique))
    u_size = bucket(len(unique), multiple=multiple)
    tokens = np.full((u_size, t_size), pad_id, np.int32)
    start = np.full((u_size,), t_size - 1, np.int32)
    for ids, u in unique.items():
        tokens[u, t_size - len(ids) :] = ids
        start[u] = t_size - len(ids)
    return tokens, start, row_map


def _admit(
    params: LlamaParams,
    state: DecodeState,
    placed: list[_Row | None],
    ready: list[_Prefill],
    end: np.ndarray,
    put: Callable[[np.ndarray], Any],
    stats: GenerationStats,
    **static: Any,
) -> tuple[SamplingParams, DecodeState, np.ndarray]:
    """Put the rows of the prefilled prompts ``ready`` in free batch positions, one
    :func:`_join` per prefill; returns the new sampling settings, state and first tokens
    ``[B, 1]``."""
    free = iter([i for i, r in enumerate(placed) if r is None or r.finish is not None])
    groups = [[next(free) for _ in p.rows] for p in ready]
    for p, group in zip(ready, groups):
        for i, r in zip(group, p.rows):
            placed[i] = r
    sampling = SamplingParams(*(put(x) for x in _sampling_arrays(placed)))
    new_tokens = np.full((len(placed), 1), -1, np.int32)
    for p, group in zip(ready, groups):
        filler = bucket(len(group)) - len(group)  # bucket padding repeats the last joiner: the same writes again
        row_map = np.asarray(p.row_map + [p.row_map[-1]] * filler, np.int32)
        rows = np.asarray(group + [group[-1]] * filler, np.int32)
        state, first = _join(params, state, p.hidden, p.scratch, p.start, row_map, rows, sampling, end, **static)
        new_tokens[group, 0] = np.asarray(first)[: len(group)]
        stats.join_calls += 1
    stats.joined_rows += sum(len(p.rows) for p in ready)
    return sampling, state, new_tokens


def _report(
    placed: list[_Row | None], tokenizer: GGUFTokenizer, end_ids: Sequence[int], stats: GenerationStats
) -> None:
    """Stream new tokens to their rows' ``on_tokens``; hand finished rows their result."""
    for r in placed:
        if r is None or r.result is not None:
            continue
        callback = r.request.on_tokens
        if callback is not None and len(r.tokens) > r.reported:
            r.reported = len(r.tokens)
            callback(tuple(r.tokens))
        if r.finish is not None:
            r.result = _result(r, tokenizer, end_ids)
            if r.request.on_done is not None:
                r.request.on_done(r.result)


def _sampling_arrays(placed: Sequence[_Row | None]) -> SamplingParams:
    """Host arrays of each batch position's sampling settings; empty positions are greedy
    one-token rows."""
    real = [r.config if r is not None else None for r in placed]
    return SamplingParams(
        temperature=np.asarray([c.temperature if c else 0.0 for c in real], np.float32),
        top_k=np.asarray([c.top_k if c else 0 for c in real], np.int32),
        top_p=np.asarray([c.top_p if c else 1.0 for c in real], np.float32),
        seed=np.asarray([seed_words(c.seed) if c else (0, 0) for c in real], np.uint32).reshape(-1, 2),
        max_new=np.asarray([r.max_new if r is not None else 1 for r in placed], np.int32),
        use_eos=np.asarray([not c.ignore_eos if c else True for c in real], bool),
    )


_MODES = (GREEDY, SAMPLE, FILTER)  # each program serves the rows of those before it too


def _mode(rows: Sequence[_Row], least: str = GREEDY) -> str:
    """The cheapest sampling program, ``least`` or above, that serves every row."""
    if any(r.config.filters for r in rows):
        return FILTER
    needed = SAMPLE if any(r.config.temperature > 0 for r in rows) else GREEDY
    return max(needed, least, key=_MODES.index)


def _absorb(
    placed: list[_Row | None],
    new_tokens: np.ndarray,
    done: np.ndarray,
    tokenizer: GGUFTokenizer,
    end_ids: Sequence[int],
) -> None:
    """Append a chunk's tokens (``[batch, steps]``) to the live rows; settle rows that the
    device or a stop string finished."""
    for b, r in enumerate(placed):
        if r is None or r.finish is not None:
            continue
        added = [int(t) for t in new_tokens[b] if t >= 0]
        if not added:
            continue
        r.tokens.extend(added)
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
    return Generation(
        text=text, token_ids=tuple(tokens), prompt_tokens=len(r.request.prompt_ids), finish_reason=r.finish or "length"
    )
