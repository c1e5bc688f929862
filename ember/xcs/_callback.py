"""LLM calls inside traced JAX code: ``jax.jit``, ``jax.vmap`` and ``shard_map`` reach a model
through a host callback.

Traced code holds arrays, never strings, so prompts live on the host in a :class:`PromptTable`
and traced code passes integer ids into it; answers come back as arrays (a parsed number, a
choice index, a score, token ids). :func:`llm_callback` wraps any Ember system (an operator,
an :class:`~ember.operators.LMModule`, a model id, or a plain host function) as a traceable
``ids -> array``; :func:`generate_callback` does the same for the embedded model on token
arrays.

**One host call per batch.** The call is a ``jax.pure_callback`` with
``vmap_method="broadcast_all"``: under ``jax.vmap`` (nested too, and inside ``jax.jit``) it is
ONE host call that receives the whole batch of ids. The host side de-duplicates the ids and
starts every model call at once in one :class:`~ember._runtime.TaskGroup`, so the calls
share the runtime's per-model concurrency budget, and the first failure cancels the rest
and raises: nothing partial comes back.

**No call is paid twice.** XLA may drop a pure callback (an unused result is dead code, and
then nothing is paid) or run it more than once (rematerialisation, one run per device under
``shard_map``, a caller running the compiled function again). So an LLM call under a pure
callback is treated as a pure function of its prompt: each callback object keeps a memo,
keyed by the deterministic request key of the table entry, of the *futures* of its calls.
A repeat within the callback's life reuses the answer, and a concurrent duplicate (two
threads, or the replicas of a ``shard_map``) waits on the one call in flight instead of
starting a second. A failed or cancelled call is not memoized, as a retry may succeed; the
answers of its siblings that did succeed are kept. Across processes, the models layer's
response cache (``ModelService(cache=ResponseCache(dir))``, keys over model, parameters,
messages and sample index) makes a rerun free when it is switched on.

*Why not* ``io_callback``: an unordered ``io_callback`` under ``vmap`` becomes a loop of host
calls, one id at a time (16 ids at 50 ms latency: 800 ms instead of 50 ms), and an ordered
one cannot be vmapped at all. The memo gives what ``io_callback`` would (each call made
once) without losing the batch. Independent callbacks inside one ``jit`` still run one after
another on XLA's host thread: put the ids of independent calls into one batch to overlap them.

**shard_map.** A callback runs once per device, replicas included: shard the ids over batch
axes only, so each device asks for its own slice; where ids are replicated, the memo absorbs
the replicas' repeats (each waits on the first).

**Errors.** An exception raised in a callback reaches the caller of a compiled function as
``jax.errors.JaxRuntimeError`` (JAX 0.10: the original type survives only as text in the
message). Called eagerly on concrete ids, the callback skips XLA and raises the typed Ember
error itself. Under ``jit`` the original is kept as :attr:`HostCallback.last_error`, and
``with callback.reraise(): ...`` turns the wrapper back into it. (Ids that are concrete
even inside a trace, such as a literal ``jnp.arange(4)``, are answered at once, at trace
time; the answers then become constants of the compiled function.)

**Gradients.** Answers from a model have no derivative: ``jax.grad`` through a call (ids that
carry a gradient) raises :class:`NonDifferentiableError`. ``jax.lax.stop_gradient`` around
the call's result treats the answer as a constant, and grad then works. Forward mode
(``jax.jvp``) is refused by JAX itself (the call is a ``jax.custom_vjp``).

Offline, the loopback server answers arithmetic:

>>> import os, jax
>>> from ember.testing import LoopbackServer
>>> server = LoopbackServer().start()
>>> os.environ.update(server.environ())
>>> table = PromptTable([f"What is {n} + 1?" for n in range(4)])
>>> add_one = llm_callback("openai:gpt-4o-mini", table)
>>> jax.jit(jax.vmap(add_one))(table.ids)
Array([1., 2., 3., 4.], dtype=float32)
>>> add_one.host_calls, add_one.calls_started
(1, 4)
>>> server.close()
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ember._runtime import Cancelled, TaskGroup
from ember.operators._lm import LMModule
from ember.operators._operator import Operator
from ember.xcs._transform_errors import CallbackInputError, CallbackOutputError, NonDifferentiableError, PromptIdError

if TYPE_CHECKING:
    from ember.local import LocalModel

__all__ = [
    "HostCallback",
    "LLMCallback",
    "PromptTable",
    "TokenCallback",
    "generate_callback",
    "llm_callback",
    "parse_number",
]

Entry = str | Mapping[str, Any]
#: The default result of :func:`llm_callback`: one float32 per id.
FLOAT32 = jax.ShapeDtypeStruct((), jnp.float32)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class PromptTable(Sequence[Entry]):
    """An immutable host-side table of prompts; traced code refers to entries by index.

    Entries are prompt strings or operator input mappings (``{"query": "..."}``). Each has a
    deterministic request key (its canonical JSON), which the callbacks' memos are keyed by.
    """

    def __init__(self, prompts: Iterable[Entry]) -> None:
        entries = tuple(dict(p) if isinstance(p, Mapping) else p for p in prompts)
        for i, entry in enumerate(entries):
            if not isinstance(entry, str | dict):
                raise TypeError(f"prompt {i}: expected a string or a mapping, got {type(entry).__name__}")
        self._entries = entries
        self._keys = tuple(json.dumps(e, sort_keys=True, separators=(",", ":"), default=str) for e in entries)

    @property
    def ids(self) -> jax.Array:
        """Every id of the table, ``int32[len(table)]``."""
        return jnp.arange(len(self._entries), dtype=jnp.int32)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def __getitem__(self, prompt_id: Any) -> Entry:  # type: ignore[override]
        return self._entries[self.index(prompt_id)]

    def index(self, prompt_id: Any) -> int:
        """``prompt_id`` as a valid index (a whole number in range), else a typed error."""
        try:
            value = float(prompt_id)
        except (TypeError, ValueError):
            raise CallbackInputError(f"prompt id {prompt_id!r} is not a number") from None
        if not value.is_integer():
            raise CallbackInputError(f"prompt id {prompt_id!r} is not a whole number")
        if not 0 <= value < len(self._entries):
            raise PromptIdError(int(value), len(self._entries))
        return int(value)

    def key(self, prompt_id: Any) -> str:
        """The deterministic request key of an entry: equal entries share one answer."""
        return self._keys[self.index(prompt_id)]

    def __repr__(self) -> str:
        return f"PromptTable({len(self)} prompts)"


class _Memo:
    """Futures of answers by request key: a key is claimed by one caller, the others wait on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[Hashable, concurrent.futures.Future[Any]] = {}

    def claim(self, keys: Iterable[Hashable]) -> tuple[dict[Hashable, concurrent.futures.Future[Any]], list[Hashable]]:
        """Futures for ``keys``, and the keys this caller must answer (nobody had them)."""
        futures, mine = {}, []
        with self._lock:
            for key in keys:
                future = self._futures.get(key)
                if future is None:
                    future = self._futures[key] = concurrent.futures.Future()
                    mine.append(key)
                futures[key] = future
        return futures, mine

    def settle(
        self,
        key: Hashable,
        future: concurrent.futures.Future[Any],
        source: concurrent.futures.Future[Any] | None,
        why: BaseException | None,
    ) -> None:
        """Copy ``source``'s success into ``future``; anything else forgets the key and fails it."""
        if source is not None and source.done() and not source.cancelled() and source.exception() is None:
            future.set_result(source.result())
            return
        with self._lock:
            self._futures.pop(key, None)
        future.set_exception(why or Cancelled("the call did not run"))

    def __len__(self) -> int:
        with self._lock:
            return sum(f.done() and f.exception() is None for f in self._futures.values())


class HostCallback:
    """Base of the traceable host callbacks: dispatch, gradients, counters and error recovery.

    ``host_calls`` counts host invocations (one per batched call), ``calls_started`` the
    model calls actually started (what is paid for), ``last_error`` the last failure raised
    on the host.
    """

    def __init__(self) -> None:
        self._memo = _Memo()
        self._count_lock = threading.Lock()
        self.host_calls = 0
        self.calls_started = 0
        self.last_error: BaseException | None = None
        self._traced = jax.custom_vjp(self._pure)
        self._traced.defvjp(self._forward, self._backward)

    @property
    def memoized(self) -> int:
        """How many answers the memo holds."""
        return len(self._memo)

    def _result_shape(self, *args: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        raise NotImplementedError

    def _answer(self, *args: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _host(self, *args: Any) -> np.ndarray:
        with self._count_lock:
            self.host_calls += 1
        try:
            return self._answer(*(np.asarray(a) for a in args))
        except BaseException as error:
            self.last_error = error
            raise

    def _started(self, n: int) -> None:
        with self._count_lock:
            self.calls_started += n

    def _call(self, *args: Any) -> jax.Array:
        if not any(isinstance(a, jax.core.Tracer) for a in args):  # eager: no XLA, typed errors
            return jnp.asarray(self._host(*args))
        return self._traced(*args)

    def _pure(self, *args: jax.Array) -> jax.Array:
        shape = self._result_shape(*(jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in args))
        return jax.pure_callback(self._host, shape, *args, vmap_method="broadcast_all")

    def _forward(self, *args: jax.Array) -> tuple[jax.Array, None]:
        return self._pure(*args), None

    def _backward(self, residual: None, cotangent: jax.Array) -> tuple[Any, ...]:
        raise NonDifferentiableError(
            f"jax.grad reached {self!r}: answers from a model have no derivative. To treat the "
            "answer as a constant, wrap the call's result in jax.lax.stop_gradient(...)."
        )

    @contextlib.contextmanager
    def reraise(self) -> Iterator[None]:
        """Turn a ``JaxRuntimeError`` caused by this callback back into the original error.

        ``with llm.reraise(): out = jax.jit(f)(ids)``; the wrapper stays the ``__cause__``.
        """
        before = self.last_error
        try:
            yield
        except jax.errors.JaxRuntimeError as wrapper:
            error = self.last_error
            if error is None or error is before:
                raise
            raise error from wrapper


class LLMCallback(HostCallback):
    """``ids -> array``: see :func:`llm_callback`."""

    def __init__(
        self,
        system: Operator | LMModule | str | Callable[[Entry], Any],
        table: PromptTable,
        result: jax.ShapeDtypeStruct,
        parse: Callable[[Any], Any] | None,
    ) -> None:
        if not isinstance(table, PromptTable):
            raise TypeError(f"table must be a PromptTable, got {type(table).__name__}")
        if isinstance(system, str):
            system = LMModule(system)
        if isinstance(system, LMModule) and not all(isinstance(e, str) for e in table):
            raise TypeError("an LMModule or model id takes prompt strings; the table holds mappings")
        if not callable(system):
            raise TypeError(f"system must be an Operator, LMModule, model id or callable, got {type(system).__name__}")
        if parse is None and (result.shape != () or not np.issubdtype(result.dtype, np.number)):
            raise TypeError(
                f"the default parse gives a number; pass parse= for a {result.dtype}{list(result.shape)} result"
            )
        super().__init__()
        self.system, self.table, self.result = system, table, result
        self.parse = parse or parse_number

    def __call__(self, ids: jax.typing.ArrayLike) -> jax.Array:
        """Answers for ``ids`` (integer, or whole floats), shaped ``ids.shape + result.shape``."""
        return self._call(ids)

    def _result_shape(self, ids: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(ids.shape + self.result.shape, self.result.dtype)

    def _answer(self, ids: np.ndarray) -> np.ndarray:
        flat = [self.table.index(i) for i in ids.reshape(-1).tolist()]
        by_key = {self.table.key(i): i for i in dict.fromkeys(flat)}
        futures, mine = self._memo.claim(by_key)
        self._run(mine, by_key, futures)
        values = {key: self._parse(by_key[key], self._output(future.result())) for key, future in futures.items()}
        out = np.empty((len(flat), *self.result.shape), self.result.dtype)
        for row, i in enumerate(flat):
            out[row] = values[self.table.key(i)]
        return out.reshape(ids.shape + self.result.shape)

    def _run(
        self,
        mine: list[Hashable],
        by_key: Mapping[Hashable, int],
        futures: Mapping[Hashable, concurrent.futures.Future[Any]],
    ) -> None:
        """Start every claimed call in one TaskGroup; settle each memo future however it ends."""
        started: dict[Hashable, concurrent.futures.Future[Any]] = {}
        failure: BaseException | None = None
        try:
            with TaskGroup() as group:
                for key in mine:
                    started[key] = self._start(group, self.table[by_key[key]])
                    self._started(1)
        except BaseException as error:
            failure = error
            raise
        finally:
            for key in mine:
                self._memo.settle(key, futures[key], started.get(key), failure)

    def _start(self, group: TaskGroup, entry: Entry) -> concurrent.futures.Future[Any]:
        system = self.system
        if isinstance(system, LMModule):  # on the I/O loop, attached to the group: no thread per call
            return system.submit(entry)
        if isinstance(system, Operator):
            return group.spawn(system, inputs=entry if isinstance(entry, Mapping) else {"query": entry})
        return group.spawn(system, entry)

    def _output(self, value: Any) -> Any:
        """What ``parse`` sees: an LMModule's answer text, else the system's output."""
        return value.text if isinstance(self.system, LMModule) else value

    def _parse(self, prompt_id: int, output: Any) -> np.ndarray:
        try:
            value = np.asarray(self.parse(output))
        except CallbackOutputError:
            raise
        except Exception as error:
            raise CallbackOutputError(f"prompt id {prompt_id}: parse failed on {_short(output)}: {error}") from error
        if value.shape != self.result.shape:
            raise CallbackOutputError(
                f"prompt id {prompt_id}: parse returned shape {value.shape}, the callback's result "
                f"is {self.result.dtype}{list(self.result.shape)} (answer {_short(output)})"
            )
        try:
            return value.astype(self.result.dtype, casting="unsafe")
        except (TypeError, ValueError) as error:
            raise CallbackOutputError(
                f"prompt id {prompt_id}: cannot make {value.dtype} into {self.result.dtype}"
            ) from error

    def __repr__(self) -> str:
        return (
            f"llm_callback({_short(self.system)}, {self.table!r}, result={self.result.dtype}{list(self.result.shape)})"
        )


class TokenCallback(HostCallback):
    """``(tokens, lengths) -> int32[..., max_new_tokens]``: see :func:`generate_callback`."""

    def __init__(self, model: LocalModel, config: Any, pad_id: int) -> None:
        super().__init__()
        self.model, self.config, self.pad_id = model, config, pad_id

    def __call__(self, tokens: jax.typing.ArrayLike, lengths: jax.typing.ArrayLike) -> jax.Array:
        """Greedy (or seeded) continuations of ``tokens[..., :lengths]``, padded with ``pad_id``."""
        return self._call(tokens, lengths)

    def _result_shape(self, tokens: jax.ShapeDtypeStruct, lengths: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        if tokens.ndim < 1 or lengths.shape != tokens.shape[:-1]:
            raise CallbackInputError(
                f"tokens [..., T] need lengths [...]: got tokens {tokens.shape}, lengths {lengths.shape}"
            )
        return jax.ShapeDtypeStruct((*tokens.shape[:-1], self.config.max_new_tokens), jnp.int32)

    def _answer(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self._result_shape(tokens, lengths)
        rows, width = tokens.reshape(-1, tokens.shape[-1]), tokens.shape[-1]
        prompts = []
        for row, length in zip(rows, lengths.reshape(-1).tolist(), strict=True):
            if not 1 <= length <= width:
                raise CallbackInputError(f"prompt length {length} is outside 1..{width} (the token array's last axis)")
            prompts.append(tuple(int(t) for t in row[:length]))
        futures, mine = self._memo.claim(dict.fromkeys(prompts))
        if mine:  # one batched generation for every prompt nobody has asked for yet
            self._started(len(mine))
            try:
                generations = self.model.generate_tokens([list(p) for p in mine], self.config)
            except BaseException as error:
                for key in mine:
                    self._memo.settle(key, futures[key], None, error)
                raise
            for key, generation in zip(mine, generations, strict=True):
                futures[key].set_result(generation.token_ids)
        out = np.full((len(prompts), self.config.max_new_tokens), self.pad_id, np.int32)
        for i, prompt in enumerate(prompts):
            ids = futures[prompt].result()[: self.config.max_new_tokens]
            out[i, : len(ids)] = ids
        return out.reshape((*tokens.shape[:-1], self.config.max_new_tokens))

    def __repr__(self) -> str:
        return f"generate_callback({self.model!r}, max_new_tokens={self.config.max_new_tokens})"


def llm_callback(
    system: Operator | LMModule | str | Callable[[Entry], Any],
    table: PromptTable,
    *,
    result: jax.ShapeDtypeStruct = FLOAT32,
    parse: Callable[[Any], Any] | None = None,
) -> LLMCallback:
    """A JAX-traceable ``ids -> array`` that asks ``system`` about ``table[id]`` for each id.

    Args:
        system: an :class:`Operator` (a mapping entry is its ``inputs``; a string entry is
            passed as ``inputs={"query": entry}``), an :class:`LMModule`, a model id such as
            ``"openai:gpt-4o"`` (an ``LMModule`` through the app's ModelService), or a host
            function ``entry -> output``.
        table: the prompts the ids refer to.
        result: shape and dtype of one answer; the output is ``ids.shape + result.shape``.
        parse: ``output -> array-like`` of ``result``'s shape (cast to its dtype). The default,
            :func:`parse_number`, needs a scalar numeric ``result``.

    See the module docstring for batching, the memo, errors and gradients.
    """
    return LLMCallback(system, table, result, parse)


def generate_callback(
    model: LocalModel,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    pad_id: int | None = None,
) -> TokenCallback:
    """A JAX-traceable ``(tokens, lengths) -> int32[..., max_new_tokens]`` on the embedded model.

    ``tokens`` is ``int[..., T]`` with each prompt left-aligned in its row: its first
    ``lengths[...]`` entries are the prompt, the rest are ignored. Each output row holds the
    generated token ids (the end-of-turn token included, as ``LocalModel.generate_tokens``
    gives them), then ``pad_id`` (default: the tokenizer's pad id). Under ``vmap`` one host
    call is one batched generation over the distinct prompts not yet answered.
    """
    from ember.local import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return TokenCallback(model, config, model.tokenizer.pad_id if pad_id is None else pad_id)


def parse_number(output: Any) -> float:
    """The number an answer gives: numbers pass through; text gives its *last* number (a
    chain of thought ends with its result; ``"1,234"`` reads as 1234)."""
    if isinstance(output, int | float | np.number | np.bool_):
        return float(output)
    numbers = _NUMBER.findall(str(output).replace(",", ""))
    if not numbers:
        raise CallbackOutputError(f"no number in the answer {_short(output)}")
    return float(numbers[-1])


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
