"""Micro-batching: requests that arrive close together share one batched generation.

An ensemble of 8 samples sends 8 requests at once. Run one by one, each would pay a full
prefill and a decode loop whose every step reads all ~0.5 GB of weights for one row; run
as one batch, the 8 rows share every weight read (and identical prompts share one
prefill), which is where the throughput comes from (see ``bench/bench_local_model.py``).

A single worker thread owns generation: it takes the first waiting request, keeps
collecting for ``window_s`` (or until ``max_batch``), then generates the whole group, so
the start of a burst shares one prefill and one decode loop. Requests that arrive while a
batch is generating *join* it between decode chunks (continuous batching, see
:mod:`ember.local._generate`): a judge's request that follows an ensemble's answers does
not wait for the whole batch to finish. One that cannot join (its prompt or its answer does
not fit the running cache) waits for the next batch. Every request's future resolves the
moment its own row finishes. Callers get a ``concurrent.futures.Future``, so the asyncio
provider awaits it with ``asyncio.wrap_future`` and never blocks the event loop.

A request may carry a mesh (the provider passes :func:`ember.local.current_mesh`): its
batch is generated with ``mesh=``, rows split over the mesh's batch axis, so a ``vmap``
over prompts becomes one generation spread over devices. Requests are grouped by
``(mesh, batch_axis)``: one generation has one placement, so requests under different
meshes (or none) never share a batch, even when they arrive in the same window.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from ember.local._errors import PromptTooLongError
from ember.local._generate import Generation, GenerationConfig, GenerationRequest
from ember.local._mesh import MeshSpec
from ember.local._model import LocalModel, Prompt
from ember.local._sampling import SAMPLE

__all__ = ["MicroBatcher", "shared_batcher"]


class RowFuture(Future[Generation]):
    """A request's future. Cancelling it drops a request still waiting (as any future) and
    stops one already generating at its next decode chunk, freeing its batch row: an
    abandoned stream or a cancelled call does not keep spending the batch's compute."""

    def __init__(self) -> None:
        super().__init__()
        self._cancel_requested = False

    def cancel(self) -> bool:
        self._cancel_requested = True
        return super().cancel()

    def cancel_requested(self) -> bool:
        return self._cancel_requested


@dataclasses.dataclass
class _Pending:
    prompt: Prompt
    config: GenerationConfig
    deadline: float | None
    future: RowFuture
    assistant_prefix: str = ""
    mesh: MeshSpec | None = None
    on_tokens: Callable[[Sequence[int]], None] | None = None
    prompt_ids: list[int] | None = None  # encoded once, when first considered

    def request(self, stopping: Callable[[], bool]) -> GenerationRequest:
        future = self.future
        return GenerationRequest(
            self.prompt_ids,
            self.config,
            self.deadline,
            self.on_tokens,
            future.set_result,
            lambda: future.cancel_requested() or stopping(),
        )


class MicroBatcher:
    """Serve generation requests for one model, grouping concurrent ones into batches."""

    def __init__(self, model: LocalModel, *, window_s: float = 0.01, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._model = model
        self.window_s = window_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        # Requests taken off the queue but not yet served (only the worker thread touches it).
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._closing = False
        self._stopping = False  # set at interpreter exit: abandon everything (see _abandon_all)
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: Batched generations run so far.
        self.batches = 0
        #: Of those, the ones split over a mesh.
        self.sharded_batches = 0

    def submit(
        self,
        prompt: Prompt,
        config: GenerationConfig,
        *,
        deadline: float | None = None,
        assistant_prefix: str = "",
        mesh: MeshSpec | None = None,
        on_tokens: Callable[[Sequence[int]], None] | None = None,
    ) -> RowFuture:
        """Queue one prompt; the future resolves to its :class:`Generation` (or its error:
        :class:`PromptTooLongError` for a prompt that does not fit the context window).

        ``deadline`` (a ``time.monotonic()`` instant) stops the row with ``finish_reason``
        ``"timeout"``. Cancelling the future drops a request still waiting and stops one
        already generating at the next decode chunk (see :class:`RowFuture`).
        ``assistant_prefix`` is text the reply must start with; generation continues it.
        ``mesh`` (a :class:`MeshSpec`, e.g. :func:`~ember.local.current_mesh`) splits the
        batch this request joins over the mesh's batch axis. ``on_tokens`` streams: it is
        called on the worker thread with the row's token ids so far after every decode chunk.
        """
        if mesh is not None and not isinstance(mesh, MeshSpec):
            raise TypeError(f"mesh must be a MeshSpec (see ember.local.current_mesh), got {type(mesh).__name__}")
        future = RowFuture()
        self._ensure_worker()
        self._queue.put(_Pending(prompt, config, deadline, future, assistant_prefix, mesh, on_tokens))
        return future

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        self._stop_worker(timeout=None)

    def _stop_worker(self, timeout: float | None) -> None:
        with self._start_lock:
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join(timeout)
                self._worker = None

    def _abandon(self) -> None:
        """Stop now: rows in flight stop at their next decode chunk, waiting requests are
        never served, and the worker is gone when this returns (or 30 s have passed)."""
        self._stopping = True
        self._stop_worker(timeout=30)

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None:
                self._closing = self._stopping = False
                self._worker = threading.Thread(target=self._run, name="ember-local-batcher", daemon=True)
                self._worker.start()
                _running.add(self)

    def _is_stopping(self) -> bool:
        return self._stopping

    def _run(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch = [first]
            window_end = time.monotonic() + self.window_s
            while len(batch) < self.max_batch and not self._closing:
                item = self._next(max(window_end - time.monotonic(), 0.0))
                if item is None:
                    break
                batch.append(item)
            self._serve(batch)

    def _next(self, timeout: float | None) -> _Pending | None:
        """The oldest request not yet served; ``None`` when none came within ``timeout``
        (``None``: wait for one) or the batcher is closing."""
        if self._stopping:
            return None
        if self._waiting:
            return self._waiting.popleft()
        if self._closing:
            return None
        try:
            item = self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            self._closing = True
        return item

    def _drain(self) -> None:
        """Move what has arrived on the queue to the waiting line."""
        while not self._closing:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._closing = True
            else:
                self._waiting.append(item)

    def _serve(self, batch: list[_Pending]) -> None:
        groups: dict[MeshSpec | None, list[_Pending]] = {}
        for p in batch:  # one generation per placement, in order of first arrival
            groups.setdefault(p.mesh, []).append(p)
        for mesh, group in groups.items():
            self._serve_group(group, mesh)

    def _prepared(self, p: _Pending) -> bool:
        """Encode ``p``'s prompt once; a prompt that cannot be served fails its future alone."""
        if p.prompt_ids is not None:
            return True
        model = self._model
        try:
            p.prompt_ids = model.encode(p.prompt, assistant_prefix=p.assistant_prefix)
            if len(p.prompt_ids) >= model.context_window:
                raise PromptTooLongError(len(p.prompt_ids), model.context_window, model=str(model.path))
        except Exception as exc:  # noqa: BLE001 - a bad request fails alone
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(exc)
            return False
        return True

    def _serve_group(self, batch: list[_Pending], mesh: MeshSpec | None) -> None:
        ready = [p for p in batch if self._prepared(p) and p.future.set_running_or_notify_cancel()]
        if not ready:
            return
        self.batches += 1
        placement = {} if mesh is None else {"mesh": mesh.mesh, "batch_axis": mesh.batch_axis}
        if mesh is not None:
            self.sharded_batches += 1
        arrivals = _Arrivals(self, mesh, served=list(ready))
        try:
            requests = [p.request(self._is_stopping) for p in ready]
            # SAMPLE serves greedy rows exactly: one program per shape for mixed traffic.
            self._model.serve(requests, arrivals=arrivals, max_rows=self.max_batch, min_mode=SAMPLE, **placement)
        except Exception as exc:  # noqa: BLE001 - every waiter of the batch hears of it
            for p in arrivals.served:
                if not p.future.done():
                    p.future.set_exception(exc)


class _Arrivals:
    """The batcher's waiting line, as seen by one running generation: requests under the
    same placement, taken in arrival order."""

    def __init__(self, batcher: MicroBatcher, mesh: MeshSpec | None, *, served: list[_Pending]) -> None:
        self._batcher = batcher
        self._mesh = mesh
        #: Every request this generation has taken, joined ones included.
        self.served = served

    def take(self, fits: Callable[[Sequence[int], GenerationConfig], bool], limit: int) -> list[GenerationRequest]:
        batcher = self._batcher
        if batcher._stopping:
            return []
        batcher._drain()
        taken: list[GenerationRequest] = []
        kept: collections.deque[_Pending] = collections.deque()
        for p in batcher._waiting:
            if len(taken) >= limit or p.mesh != self._mesh:
                kept.append(p)
            elif not batcher._prepared(p):
                continue  # it failed alone
            elif not fits(p.prompt_ids, p.config):
                kept.append(p)  # for the next batch
            elif p.future.set_running_or_notify_cancel():  # else cancelled while waiting: dropped
                self.served.append(p)
                taken.append(p.request(batcher._is_stopping))
        batcher._waiting = kept
        return taken


_batchers: dict[LocalModel, MicroBatcher] = {}
_batchers_lock = threading.Lock()
_running: weakref.WeakSet[MicroBatcher] = weakref.WeakSet()


@atexit.register
def _abandon_all() -> None:
    """At interpreter exit, stop every batcher's worker between decode chunks and wait for it.

    The worker is a daemon thread, and one still inside XLA's C++ when the interpreter
    finalizes aborts the whole process ("terminate called ... exception not rethrown") as
    Python unwinds it. Since rows hand back their answers before their batch ends, a program
    can have everything it asked for and exit while the batch still runs; so generations in
    flight are abandoned (their callers are gone), not waited out.
    """
    for batcher in list(_running):
        batcher._abandon()


def shared_batcher(model: LocalModel, *, window_s: float = 0.01, max_batch: int = 32) -> MicroBatcher:
    """The process-wide batcher of ``model``; the first call's ``window_s`` and
    ``max_batch`` stay in force for it."""
    with _batchers_lock:
        if model not in _batchers:
            _batchers[model] = MicroBatcher(model, window_s=window_s, max_batch=max_batch)
        return _batchers[model]
