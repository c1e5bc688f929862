"""Micro-batching: requests that arrive close together share one batched generation.

An ensemble of 8 samples sends 8 requests at once. Run one by one, each would pay a full
prefill and a decode loop whose every step reads all ~0.5 GB of weights for one row; run
as one batch, the 8 rows share every weight read (and identical prompts share one
prefill), which is where the throughput comes from (see ``bench/bench_local_model.py``).

A single worker thread owns generation: it takes the first waiting request, keeps
collecting for ``window_s`` (or until ``max_batch``), then generates the whole group.
Requests that arrive while a batch is generating wait and form the next batch. Callers
get a ``concurrent.futures.Future``, so the asyncio provider awaits it with
``asyncio.wrap_future`` and never blocks the event loop.

A request may carry a mesh (the provider passes :func:`ember.local.current_mesh`): its
batch is generated with ``mesh=``, rows split over the mesh's batch axis, so a ``vmap``
over prompts becomes one generation spread over devices. Requests are grouped by
``(mesh, batch_axis)``: one generation has one placement, so requests under different
meshes (or none) never share a batch, even when they arrive in the same window.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from ember.local._errors import PromptTooLongError
from ember.local._generate import Generation, GenerationConfig
from ember.local._mesh import MeshSpec
from ember.local._model import LocalModel, Prompt

__all__ = ["MicroBatcher", "shared_batcher"]


@dataclasses.dataclass
class _Pending:
    prompt: Prompt
    config: GenerationConfig
    deadline: float | None
    future: Future
    assistant_prefix: str = ""
    mesh: MeshSpec | None = None
    on_tokens: Callable[[Sequence[int]], None] | None = None


class MicroBatcher:
    """Serve generation requests for one model, grouping concurrent ones into batches."""

    def __init__(self, model: LocalModel, *, window_s: float = 0.01, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._model = model
        self.window_s = window_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
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
    ) -> Future[Generation]:
        """Queue one prompt; the future resolves to its :class:`Generation` (or its error:
        :class:`PromptTooLongError` for a prompt that does not fit the context window).

        ``deadline`` (a ``time.monotonic()`` instant) stops the row with ``finish_reason``
        ``"timeout"``. Cancelling the future before its batch starts drops the request.
        ``assistant_prefix`` is text the reply must start with; generation continues it.
        ``mesh`` (a :class:`MeshSpec`, e.g. :func:`~ember.local.current_mesh`) splits the
        batch this request joins over the mesh's batch axis. ``on_tokens`` streams: it is
        called on the worker thread with the row's token ids so far after every decode chunk.
        """
        if mesh is not None and not isinstance(mesh, MeshSpec):
            raise TypeError(f"mesh must be a MeshSpec (see ember.local.current_mesh), got {type(mesh).__name__}")
        future: Future[Generation] = Future()
        self._ensure_worker()
        self._queue.put(_Pending(prompt, config, deadline, future, assistant_prefix, mesh, on_tokens))
        return future

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        with self._start_lock:
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join()
                self._worker = None

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="ember-local-batcher", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, closing = [first], False
            window_end = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                remaining = window_end - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            self._serve(batch)
            if closing:
                return

    def _serve(self, batch: list[_Pending]) -> None:
        groups: dict[MeshSpec | None, list[_Pending]] = {}
        for p in batch:  # one generation per placement, in order of first arrival
            groups.setdefault(p.mesh, []).append(p)
        for mesh, group in groups.items():
            self._serve_group(group, mesh)

    def _serve_group(self, batch: list[_Pending], mesh: MeshSpec | None) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        model = self._model
        ready, ids = [], []
        for p in live:
            try:
                prompt_ids = model.encode(p.prompt, assistant_prefix=p.assistant_prefix)
                if len(prompt_ids) >= model.context_window:
                    raise PromptTooLongError(len(prompt_ids), model.context_window, model=str(model.path))
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                p.future.set_exception(exc)
                continue
            ready.append(p)
            ids.append(prompt_ids)
        if not ready:
            return
        self.batches += 1
        placement = {} if mesh is None else {"mesh": mesh.mesh, "batch_axis": mesh.batch_axis}
        if mesh is not None:
            self.sharded_batches += 1
        try:
            configs, deadlines = [p.config for p in ready], [p.deadline for p in ready]
            callbacks = [p.on_tokens for p in ready]
            streaming = {"on_tokens": callbacks} if any(callbacks) else {}
            results = model.generate_tokens(ids, configs, deadlines=deadlines, **placement, **streaming)
        except Exception as exc:  # noqa: BLE001 - every waiter of the batch hears of it
            for p in ready:
                p.future.set_exception(exc)
            return
        for p, result in zip(ready, results):
            p.future.set_result(result)


_batchers: dict[LocalModel, MicroBatcher] = {}
_batchers_lock = threading.Lock()


def shared_batcher(model: LocalModel, *, window_s: float = 0.01, max_batch: int = 32) -> MicroBatcher:
    """The process-wide batcher of ``model``; the first call's ``window_s`` and
    ``max_batch`` stay in force for it."""
    with _batchers_lock:
        if model not in _batchers:
            _batchers[model] = MicroBatcher(model, window_s=window_s, max_batch=max_batch)
        return _batchers[model]
