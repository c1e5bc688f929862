"""ModelService: the one door every model call in Ember goes through.

The call path, in order: validate the request (a parameter that could never be sent
raises :class:`~ember.models.InvalidRequestError` before anything happens) -> resolve the
model (registry + config, cached per config revision) -> response cache -> RPM/TPM budget
-> a concurrency slot -> the provider adapter under a timeout -> on a transient failure,
release the slot, back off (honouring Retry-After) and try again -> price the usage ->
record it -> cache it.

Budgets: each model id has its own limiter (its ``rate_limit``; with no concurrency of its
own, as many slots as its provider's ``max_concurrency``, else ``default_max_concurrency``),
and a provider whose config sets ``max_concurrency``,
``rpm`` or ``tpm`` has one more, shared by all its model ids; a call takes rate budget and
a slot from both (the model's slot first, so a call waiting for its model holds none of
the provider's).

An exception out of an adapter that is not one of Ember's typed errors (an SDK refusing
the request with a ``TypeError``, a bug) becomes a non-retryable
:class:`~ember.models.ProviderError` naming its type: nothing raw escapes, and nothing that
would fail the same way again is retried.

Structured output (``response_format=`` / ``json_schema=``) is asked for in the form the
provider declares (``Provider.structured_output``: ``json_schema``, ``json_object`` with the
schema beside it and in the prompt, or ``none``: the prompt alone; below ``json_schema`` a
``response_format`` answer is validated here with one repair call, a stream's too: see
:meth:`ModelService.stream`)
or its config's ``structured_output:``. A server that refuses the form, whatever status it
uses (see ``_rejects_form``), gets the next form its adapter can send, at once: one extra
request per server (provider name + base URL) and process, logged once at INFO and
remembered. Until a server has answered one structured request, such requests to it go one
at a time, so a burst pays for the probe once.

Deterministic client errors are never retried: 400, 404, 422, and a 5xx whose body is a
request-validation error (llama-cpp-python answers a refused field with a 500).

Everything after "resolve" runs on Ember's I/O loop (:mod:`ember._runtime._loop`), so the
limits are one process-wide budget however the caller is parallelised.

Each call also reports to the runtime's scopes (:mod:`ember._runtime`): its future (an
awaited call: its waiting task) is owned by the current cancel scope, so a failed sibling,
an abandoned evaluation item or Ctrl-C cancels it and closes its HTTP request; and its tokens, cost and attempts are
added to the current usage scope, which is how evaluation prices any system exactly.

What is read when: the service reads the configuration (and, through it, the environment
and config files) on every call, keyed by the manager's revision, so a key exported after
the service was built is used by its next call. A ``ModelService`` built without an
explicit ``config_manager`` first reloads the process-wide one, so it sees the files and
environment of that moment (see :class:`ember.config.ConfigManager`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import numbers
import random
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ember._runtime import UsageScope, _loop, close_matches, current_scope, current_usage_scope, did_you_mean
from ember.models._cache import ResponseCache, cache_key
from ember.models._deadline import Deadline
from ember.models._errors import (
    InvalidRequestError,
    MalformedResponseError,
    ModelError,
    ProviderError,
    ProviderTimeoutError,
    StreamInterruptedError,
)
from ember.models._factory import ModelFactory
from ember.models._info import ModelInfo
from ember.models._limits import ModelLimiter, make_limiter
from ember.models._registry import ModelRegistry
from ember.models._stream import AsyncModelStream, ModelStream
from ember.models._types import (
    ChatRequest,
    Message,
    ModelResponse,
    ProviderResult,
    StructuredOutput,
    UsageStats,
    normalize_messages,
)
from ember.models._usage import UsageService
from ember.models.providers._base import Provider
from ember.models.providers._sdk_errors import is_request_validation_error

if TYPE_CHECKING:
    from ember.config import ConfigManager

__all__ = ["ModelService", "CallStats"]

logger = logging.getLogger("ember.models")
Prompt = str | Sequence[Mapping[str, str] | Message]


@dataclasses.dataclass
class CallStats:
    """Live counters, for progress displays: read them any time, from any thread."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    in_flight: int = 0
    retries: int = 0
    waiting_to_retry: int = 0
    cache_hits: int = 0


@dataclasses.dataclass(frozen=True)
class _Route:
    info: ModelInfo
    adapter: Provider
    limiter: ModelLimiter
    #: The provider's own limits, shared by all its model ids (None: the provider sets none).
    provider_limiter: ModelLimiter | None
    timeout: float
    max_retries: int
    backoff_base: float
    backoff_max: float
    #: What this route's server accepts for structured output (shared by every route to it).
    negotiation: _Negotiation | None = None
    #: The response cache in use at this route's config revision (None: off), so a call
    #: does not read the config again to find it.
    cache: ResponseCache | None = None


class ModelService:
    """Invoke any registered model by id, synchronously, asynchronously or as a future.

    >>> import os
    >>> from ember.testing import LoopbackServer
    >>> server = LoopbackServer().start()          # offline, in place of OpenAI
    >>> os.environ.update(server.environ())
    >>> service = ModelService()
    >>> service("openai:gpt-4o", "What is 17 + 25?", temperature=0).text
    '42'
    >>> service.close(); server.close()
    """

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        usage_service: UsageService | None = None,
        *,
        config_manager: ConfigManager | None = None,
        cache: ResponseCache | bool | None = None,
    ) -> None:
        if config_manager is None:
            from ember.config import get_config_manager

            config_manager = get_config_manager()
            config_manager.reload()  # a new service sees the files and environment of now
        self.config_manager = config_manager
        self.registry = registry if registry is not None else ModelRegistry(config_manager=config_manager)
        self.usage_service = usage_service if usage_service is not None else UsageService()
        self.factory = ModelFactory(config_manager)
        self.stats = CallStats()
        self._cache_choice = cache
        self._cache_by_dir: dict[str, ResponseCache] = {}
        self._routes: dict[tuple[str, Any], _Route] = {}
        self._limiters: dict[str, ModelLimiter] = {}
        self._provider_limiters: dict[str, ModelLimiter] = {}
        self._lock = threading.Lock()

    # -- public API ---------------------------------------------------------------------
    def invoke_model(self, model_id: str, prompt: Prompt, **params: Any) -> ModelResponse:
        """Call ``model_id`` and wait for the answer.

        ``params``: ``system``, ``temperature``, ``max_tokens``, ``stop``, ``seed``,
        ``top_p``, ``response_format`` (a pydantic model: the answer is validated into
        ``response.parsed``), ``json_schema`` (a schema the provider should constrain the
        answer to, left unvalidated), ``sample_index`` (tells repeated samples apart),
        ``timeout`` (seconds), and ``extra`` (provider-specific payload fields; it may not
        override a field Ember sets, such as ``model`` or ``messages``).

        A request that could never be sent (a lone surrogate in the text, ``temperature``
        outside [0, 2], ``max_tokens`` that is not a positive integer, ...) raises
        :class:`~ember.models.InvalidRequestError` at once, naming the parameter.
        """
        if _loop.on_io_loop():
            raise RuntimeError("invoke_model would deadlock on Ember's I/O loop; await ainvoke_model instead")
        future = self.submit(model_id, prompt, **params)
        try:
            return future.result()
        except BaseException:  # Ctrl-C while waiting: the call must not outlive its caller
            future.cancel()
            raise

    __call__ = invoke_model

    def submit(self, model_id: str, prompt: Prompt, **params: Any) -> concurrent.futures.Future[ModelResponse]:
        """Start the call on the I/O loop and return its future at once (for fan-out).

        The future belongs to the current cancel scope (e.g. the enclosing
        :class:`~ember._runtime.TaskGroup`): cancelling either cancels the call.
        """
        route, request = self._prepare(model_id, prompt, params)
        scope = current_scope()
        if scope is not None:
            scope.check()
        future = _loop.submit(self._execute(route, request, current_usage_scope()))
        if scope is not None:
            scope.attach(future)
        return future

    async def ainvoke_model(self, model_id: str, prompt: Prompt, **params: Any) -> ModelResponse:
        """Async twin of :meth:`invoke_model`, awaitable from any event loop.

        Like :meth:`submit`, the call belongs to the current cancel scope: cancelling the
        scope, from any thread, cancels the call (closing its HTTP request) and the await
        raises :class:`~ember._runtime.Cancelled`.
        """
        route, request = self._prepare(model_id, prompt, params)
        scope = current_scope()
        if scope is None:
            return await _loop.run_on_io_loop(self._execute(route, request, current_usage_scope()))
        scope.check()
        return await scope.guard(_loop.run_on_io_loop(self._execute(route, request, current_usage_scope())))

    acall = ainvoke_model

    def stream(self, model_id: str, prompt: Prompt, **params: Any) -> ModelStream:
        """Stream the answer: iterate for ``str`` deltas, then the full :class:`ModelResponse`.

        Takes :meth:`invoke_model`'s parameters; bad ones raise at once. The deltas
        concatenate to ``response.text``; the response carries exact usage and cost, recorded
        as for any call. Structured output is validated after the last delta, as for a plain
        call: an answer that fails gets one repair request (not streamed, so nothing is
        yielded for it), and the response carries the repaired text and ``parsed`` with
        ``response.repaired`` set; that is the one case where the deltas (the rejected first
        answer, which cannot be taken back) do not concatenate to ``response.text``. The same limits apply, and the concurrency slot is held until the
        stream ends; a transient failure before the first delta is retried like any call,
        one after it raises :class:`~ember.models.StreamInterruptedError` (never retried: the
        caller has seen text). ``timeout`` bounds the wait for each delta, not the whole
        stream. Cache: a cached answer is replayed as one delta (``response.cached``), and a
        streamed answer is stored like any other. Stopping early (``break``, ``close()``,
        a ``with`` block, cancellation of the enclosing scope) closes the HTTP connection.
        See :mod:`ember.models._stream`.
        """
        if _loop.on_io_loop():
            raise RuntimeError("stream would deadlock on Ember's I/O loop; iterate astream instead")
        route, request = self._prepare(model_id, prompt, params)
        scope = current_scope()
        if scope is not None:
            scope.check()
        return ModelStream(self._execute_stream(route, request, current_usage_scope()), scope)

    def astream(self, model_id: str, prompt: Prompt, **params: Any) -> AsyncModelStream:
        """Async twin of :meth:`stream`: ``async for item in service.astream(...)``, from any event loop."""
        route, request = self._prepare(model_id, prompt, params)
        scope = current_scope()
        if scope is not None:
            scope.check()
        return AsyncModelStream(self._execute_stream(route, request, current_usage_scope()), scope)

    def close(self) -> None:
        """Close provider clients (on the I/O loop) and cache files."""
        adapters = self.factory.adapters()

        async def close_all() -> None:
            await asyncio.gather(*(a.aclose() for a in adapters), return_exceptions=True)

        if adapters:
            _loop.submit(close_all()).result()
        for cache in self._cache_by_dir.values():
            cache.close()

    # -- preparation (caller's thread) ----------------------------------------------------
    def _prepare(self, model_id: str, prompt: Prompt, params: dict[str, Any]) -> tuple[_Route, ChatRequest]:
        """Validate the call and resolve its route, on the caller's thread, before anything is sent.

        A request that could never be sent raises :class:`InvalidRequestError` here: no
        call, no retry, and a message naming the parameter (and the type, never the value).
        """
        if not isinstance(model_id, str) or not model_id:
            raise InvalidRequestError("model_id", f"must be a non-empty string like 'openai:gpt-4o'; got {_kind(model_id)}")
        if not _PARAMS.issuperset(params):
            unknown = params.keys() - _PARAMS
            name = sorted(unknown)[0]
            raise InvalidRequestError(
                ", ".join(sorted(unknown)),
                "is not a parameter of invoke_model." + did_you_mean(close_matches(name, _PARAMS)),
                model_id=model_id,
            )
        get = params.get
        response_format = get("response_format")
        if response_format is not None and not (
            isinstance(response_format, type) and issubclass(response_format, BaseModel)
        ):
            raise InvalidRequestError(
                "response_format", f"must be a pydantic model class; got {_kind(response_format)}", model_id=model_id
            )
        json_schema = get("json_schema")
        if json_schema is not None and not isinstance(json_schema, Mapping):
            raise InvalidRequestError("json_schema", f"must be a mapping (a JSON schema); got {_kind(json_schema)}",
                                      model_id=model_id)
        messages = _messages(prompt, get("system"), model_id)
        temperature = _real(get("temperature"), "temperature", 0.0, 2.0, model_id)
        top_p = _real(get("top_p"), "top_p", 0.0, 1.0, model_id, open_low=True)
        max_tokens = _integer(get("max_tokens"), "max_tokens", model_id, positive=True)
        seed = _integer(get("seed"), "seed", model_id)
        sample_index = _integer(get("sample_index"), "sample_index", model_id) or 0
        stop = _stop(get("stop"), model_id)
        timeout = get("timeout")
        timeout = None if timeout is None else _timeout(timeout, model_id)
        extra = _extra(get("extra"), model_id)
        route = self._route(model_id)
        request = ChatRequest(
            model_name=route.info.api_name,
            model_id=model_id,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop,
            seed=seed,
            top_p=top_p,
            response_format=response_format,
            json_schema=json_schema,
            sample_index=sample_index,
            timeout=route.timeout if timeout is None else timeout,
            extra=extra,
        )
        return route, request

    def _route(self, model_id: str) -> _Route:
        key = (model_id, self.config_manager.revision)
        route = self._routes.get(key)
        if route is not None:
            return route
        info = self.registry.get_model_info(model_id)
        adapter = self.factory.create_model(info)
        section = self.config_manager.get_config("model_registry")
        provider_config = section.providers.get(info.provider.name)
        concurrency = getattr(provider_config, "max_concurrency", None) or section.default_max_concurrency
        route = _Route(
            info=info,
            adapter=adapter,
            limiter=self._limiter(info, concurrency),
            provider_limiter=self._provider_limiter(info.provider.name, provider_config),
            timeout=adapter.settings.timeout,
            max_retries=section.max_retries,
            backoff_base=section.backoff_base,
            backoff_max=section.backoff_max,
            negotiation=_negotiation(
                info.provider.name,
                adapter.settings.base_url,
                type(adapter).structured_output_ladder(getattr(provider_config, "structured_output", None)),
            ),
            cache=self._cache(),
        )
        with self._lock:
            if len(self._routes) >= _MAX_ROUTES:  # every config scope is a new revision: stay bounded
                self._routes.clear()
            self._routes[key] = route
        return route

    def _limiter(self, info: ModelInfo, default_concurrency: int) -> ModelLimiter:
        """One limiter per model id for the process, from the model's own ``rate_limit``.

        A model without a concurrency limit of its own gets ``default_concurrency`` slots: its
        provider's budget when the provider sets one (so ``max_concurrency: 200`` on a provider
        really allows 200 in flight), else the registry's default.
        """
        own = info.rate_limit
        limits = (own.max_concurrency or default_concurrency, own.rpm, own.tpm)
        with self._lock:
            limiter = self._limiters.get(info.id)
            if limiter is None or (limiter.max_concurrency, limiter.rpm, limiter.tpm) != limits:
                limiter = self._limiters[info.id] = make_limiter(f"model:{info.id}", *limits)
            return limiter

    def _provider_limiter(self, name: str, provider_config: Any) -> ModelLimiter | None:
        """One limiter per provider: its configured limits are a budget all its model ids share."""
        limits = tuple(getattr(provider_config, field, None) for field in ("max_concurrency", "rpm", "tpm"))
        with self._lock:
            if limits == (None, None, None):
                self._provider_limiters.pop(name, None)
                return None
            limiter = self._provider_limiters.get(name)
            if limiter is None or (limiter.max_concurrency, limiter.rpm, limiter.tpm) != limits:
                limiter = self._provider_limiters[name] = make_limiter(f"provider:{name}", *limits)
            return limiter

    def _cache(self) -> ResponseCache | None:
        """The response cache the config asks for now; read when a route is built, once per revision."""
        choice = self._cache_choice
        if isinstance(choice, ResponseCache):
            return choice
        if choice is False:
            return None
        settings = self.config_manager.get_config("app").cache
        if not (settings.enabled or choice is True):
            return None
        directory = str(settings.directory)
        cache = self._cache_by_dir.get(directory)
        if cache is None:
            with self._lock:
                cache = self._cache_by_dir.setdefault(directory, ResponseCache(directory))
        return cache

    # -- execution (I/O loop) -------------------------------------------------------------
    @staticmethod
    def _cached(route: _Route, request: ChatRequest) -> tuple[ResponseCache | None, str | None, ProviderResult | None]:
        """The response cache in use, ``request``'s key in it, and its cached answer (or ``None``s)."""
        cache = route.cache
        if cache is None:
            return None, None, None
        key = cache_key(request.model_id, request)
        return cache, key, cache.get(key)

    async def _execute(self, route: _Route, request: ChatRequest, scope: UsageScope | None) -> ModelResponse:
        started = time.perf_counter()
        stats = self.stats
        stats.started += 1
        cache, key, result = self._cached(route, request)
        attempts = 0
        try:
            if result is None:
                result, attempts = await self._call_with_retries(route, request)
            else:
                stats.cache_hits += 1
        except ModelError as error:
            stats.failed += 1
            if scope is not None:
                scope.record_failure(attempts=getattr(error, "attempts", 1))
            raise
        except BaseException:
            stats.failed += 1
            raise
        return await self._finish(route, request, result, attempts, started, scope, cache, key)

    async def _finish(
        self, route: _Route, request: ChatRequest, result: ProviderResult, attempts: int, started: float,
        scope: UsageScope | None, cache: ResponseCache | None, key: str | None,
    ) -> ModelResponse:
        """Price, record and cache an answer, validate it, and repair it once where that can help.

        Shared by plain calls and streams. A ``response_format`` answer that fails validation
        gets one follow-up request (never streamed: see :meth:`stream`) when the schema was
        only asked for (JSON mode or the prompt); a server that constrained the answer to the
        schema itself (``json_schema``) would answer the same again. A repaired answer
        replaces the first one in the response cache, so a replay is valid and free.
        """
        # Answered means billed: usage is recorded even if the answer fails validation below.
        usage = self._answered(route, request, result, attempts, scope, cache, key)
        repaired = False
        try:
            try:
                parsed = _parse_structured(request, result)
            except MalformedResponseError as error:
                negotiation = route.negotiation
                if negotiation is None or negotiation.form == "json_schema":
                    raise  # the server constrained the answer itself: nothing a second ask would fix
                # Asked through the prompt (or JSON mode): show the model its answer and why, once.
                result, more = await self._call_with_retries(route, _repair_request(request, result.text, error))
                extra = UsageStats(result.input_tokens, result.output_tokens,
                                   route.info.cost.cost(result.input_tokens, result.output_tokens))
                self.usage_service.add_usage_record(request.model_id, extra)
                if scope is not None:
                    scope.record(extra, attempts=more)
                usage = usage + extra
                attempts += more
                parsed = _parse_structured(request, result)
                repaired = True
                if cache is not None:
                    cache.put(key, request.model_id, result)
        except BaseException:  # invalid, or the repair failed or was cancelled
            self.stats.failed += 1
            raise
        self.stats.succeeded += 1
        return _response(request, result, usage, attempts, started, parsed, repaired)

    def _answered(
        self, route: _Route, request: ChatRequest, result: ProviderResult, attempts: int,
        scope: UsageScope | None, cache: ResponseCache | None, key: str | None,
    ) -> UsageStats:
        """Cache an answer the provider sent, price it, and record its usage (a cache hit is free)."""
        if attempts and cache is not None:
            cache.put(key, request.model_id, result)
        cost = route.info.cost.cost(result.input_tokens, result.output_tokens) if attempts else 0.0
        usage = UsageStats(result.input_tokens, result.output_tokens, cost)
        if attempts:
            self.usage_service.add_usage_record(request.model_id, usage)
        if scope is not None:
            scope.record(usage, attempts=attempts)
        return usage

    async def _call_with_retries(self, route: _Route, request: ChatRequest) -> tuple[ProviderResult, int]:
        """:meth:`_attempts`, in the structured-output form this route's server accepts.

        Until a server has answered a structured request, one such request at a time probes
        it (the others wait for its answer, then use what it learnt): so a rejected form
        costs one extra request per server and process, however many calls were in flight.
        """
        negotiation = route.negotiation
        if request.output_schema is None or negotiation is None:
            return await self._attempts(route, request)
        rejected = 0
        while True:
            if negotiation.confirmed:
                result, attempts = await self._attempts(route, _in_form(request, negotiation.form))
                return result, attempts + rejected
            async with negotiation.probe():
                if negotiation.confirmed:
                    continue
                form = negotiation.form
                try:
                    result, attempts = await self._attempts(route, _in_form(request, form))
                except ModelError as error:
                    if not negotiation.downgrade(form, error, request.model_id):
                        raise
                    rejected += 1
                    continue
                negotiation.confirm(form)
                return result, attempts + rejected

    async def _attempts(self, route: _Route, request: ChatRequest) -> tuple[ProviderResult, int]:
        limiter, shared, stats = route.limiter, route.provider_limiter, self.stats
        # Rate budgets are awaited, and token estimates made and settled, only where there is
        # one (admit and settle are no-ops without rpm/tpm).
        rated = bool(limiter.rpm or limiter.tpm)
        shared_rated = shared is not None and bool(shared.rpm or shared.tpm)
        estimate = _estimate(request) if rated or shared_rated else 0
        shared_slots = shared.slots if shared is not None else None
        attempt = 0
        while True:
            attempt += 1
            if rated:
                await limiter.admit(estimate)
            if shared_rated:
                await shared.admit(estimate)  # type: ignore[union-attr]
            async with limiter.slots:  # the model's slot first: waiting for it holds no provider slot
                if shared_slots is not None:
                    await shared_slots.acquire()
                stats.in_flight += 1
                try:
                    # In this task (not in one wait_for would create), on a timer shared with the
                    # calls that end at about the same time: see _deadline.
                    with Deadline(request.timeout):
                        result = await route.adapter.acomplete(request)
                    if estimate:
                        actual = result.input_tokens + result.output_tokens
                        limiter.settle(estimate, actual)
                        if shared is not None:
                            shared.settle(estimate, actual)
                    return result, attempt
                except TimeoutError:
                    error: ModelError = ProviderTimeoutError(
                        f"no answer within {request.timeout:g} s", model_id=request.model_id, retryable=True
                    )
                except ModelError as exc:
                    error = _deterministic(exc)
                except Exception as exc:  # an adapter's bug, or an SDK refusing the request: typed, not retried
                    error = _unexpected(exc, route, request)
                finally:
                    stats.in_flight -= 1
                    if shared_slots is not None:
                        shared_slots.release()
            await _retry_or_raise(error, attempt, route, request, stats)


    # -- streaming (I/O loop) -------------------------------------------------------------
    async def _execute_stream(
        self, route: _Route, request: ChatRequest, scope: UsageScope | None
    ) -> AsyncIterator[str | ModelResponse]:
        """:meth:`_execute` for a stream: deltas as they come, then the priced response."""
        started = time.perf_counter()
        stats = self.stats
        stats.started += 1
        cache, key, result = self._cached(route, request)
        attempts = 0
        try:
            if result is None:
                async for item in self._stream_negotiated(route, request):
                    if isinstance(item, str):
                        yield item
                    else:
                        result, attempts = item
            else:
                stats.cache_hits += 1
                if result.text:  # a replay: the whole cached answer as one delta
                    yield result.text
        except ModelError as error:
            stats.failed += 1
            if scope is not None:
                scope.record_failure(attempts=getattr(error, "attempts", 1))
            raise
        except BaseException:  # cancelled, or closed early by its consumer
            stats.failed += 1
            raise
        assert result is not None
        yield await self._finish(route, request, result, attempts, started, scope, cache, key)

    async def _stream_negotiated(
        self, route: _Route, request: ChatRequest
    ) -> AsyncIterator[str | tuple[ProviderResult, int]]:
        """:meth:`_stream_with_retries` in the structured-output form this route's server accepts.

        The same memo and rule as :meth:`_call_with_retries`: until the form is confirmed, one
        structured request at a time probes the server; a rejection before the first item
        downgrades once and resends. The probe ends (and the form is confirmed) at the first
        item the stream yields, so a slow consumer holds up no other call.
        """
        negotiation = route.negotiation
        if request.output_schema is None or negotiation is None:
            async with contextlib.aclosing(self._stream_with_retries(route, request)) as items:
                async for item in items:
                    yield item
            return
        rejected = 0
        while True:
            if negotiation.confirmed:
                async with contextlib.aclosing(
                    self._stream_with_retries(route, _in_form(request, negotiation.form))
                ) as items:
                    async for item in items:
                        yield item if isinstance(item, str) else (item[0], item[1] + rejected)
                return
            probe = negotiation.probe()
            await probe.acquire()
            probing = True
            try:
                if negotiation.confirmed:
                    continue
                form = negotiation.form
                try:
                    async with contextlib.aclosing(self._stream_with_retries(route, _in_form(request, form))) as items:
                        async for item in items:
                            if probing:  # the server took the form: the others may go now
                                negotiation.confirm(form)
                                probe.release()
                                probing = False
                            yield item if isinstance(item, str) else (item[0], item[1] + rejected)
                    return
                except ModelError as error:
                    if not probing or not negotiation.downgrade(form, error, request.model_id):
                        raise
                    rejected += 1
            finally:
                if probing:
                    probe.release()

    async def _stream_with_retries(
        self, route: _Route, request: ChatRequest
    ) -> AsyncIterator[str | tuple[ProviderResult, int]]:
        """The adapter's :meth:`~Provider.astream` under the limits: deltas, then ``(result, attempts)``.

        Retries as :meth:`_call_with_retries` does, but only until the first delta; the slot
        is held until the stream ends or its consumer closes it.
        """
        limiter, shared, stats = route.limiter, route.provider_limiter, self.stats
        estimate = _estimate(request)
        attempt = 0
        while True:
            attempt += 1
            await limiter.admit(estimate)
            if shared is not None:
                await shared.admit(estimate)
            shared_slots = shared.slots if shared is not None else None
            parts: list[str] = []
            async with limiter.slots:
                if shared_slots is not None:
                    await shared_slots.acquire()
                stats.in_flight += 1
                source = route.adapter.astream(request)
                try:
                    while True:
                        try:
                            with Deadline(request.timeout):
                                item = await anext(source)
                        except StopAsyncIteration:
                            raise MalformedResponseError(
                                "the stream ended without its final result", snippet="".join(parts),
                                model_id=request.model_id,
                            ) from None
                        if isinstance(item, ProviderResult):
                            break
                        if item:
                            parts.append(item)
                            yield item
                    streamed = "".join(parts)
                    if item.text != streamed and item.text.startswith(streamed):
                        yield item.text[len(streamed):]  # keep the promise: deltas concatenate to the text
                    actual = item.input_tokens + item.output_tokens
                    limiter.settle(estimate, actual)
                    if shared is not None:
                        shared.settle(estimate, actual)
                    yield item, attempt
                    return
                except TimeoutError:
                    error: ModelError = ProviderTimeoutError(
                        f"no {'next delta' if parts else 'answer'} within {request.timeout:g} s",
                        model_id=request.model_id, retryable=True,
                    )
                except ModelError as exc:
                    error = _deterministic(exc)  # the same classification as _attempts
                except Exception as exc:  # an adapter's bug, or an SDK refusing the request: typed, not retried
                    error = _unexpected(exc, route, request)
                finally:
                    try:
                        await source.aclose()  # type: ignore[attr-defined]  # closes the HTTP response
                    finally:
                        stats.in_flight -= 1
                        if shared_slots is not None:
                            shared_slots.release()
            if parts:
                raise StreamInterruptedError(
                    f"the stream broke after {len(parts)} deltas ({type(error).__name__}: {error}); not retried, "
                    "the caller has seen part of the answer",
                    partial_text="".join(parts), model_id=request.model_id, attempts=attempt,
                ) from error
            await _retry_or_raise(error, attempt, route, request, stats, when=" before the first delta")


_MAX_ROUTES = 4096
_PARAMS = frozenset(
    {"system", "temperature", "max_tokens", "stop", "seed", "top_p", "response_format", "json_schema", "sample_index",
     "timeout", "extra"}
)


def _estimate(request: ChatRequest) -> int:
    """Tokens a request may use, for TPM budgets before the answer says: a quarter of its
    characters, plus ``max_tokens`` (256 when unset)."""
    return sum(len(m.content) for m in request.messages) // 4 + (request.max_tokens or 256)


def _kind(value: Any) -> str:
    """How an error names a bad value: its type, never the value (it may be a secret)."""
    return "None" if value is None else f"a value of type {type(value).__name__}"


def _number_kind(value: Any, problem: str) -> str:
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} {problem}"


def _text_problem(text: str) -> str | None:
    """Why ``text`` cannot be sent (a lone surrogate: no encoding can carry it), or None."""
    if text.isascii():  # O(1) in CPython: the common case costs nothing
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains a lone surrogate (U+{ord(text[exc.start]):04X} at position {exc.start}), which no "
            "request can carry; it usually comes from decoding bytes with errors='surrogateescape'"
        )
    return None


def _messages(prompt: Prompt, system: Any, model_id: str) -> tuple[Message, ...]:
    if system is not None and not isinstance(system, str):
        raise InvalidRequestError("system", f"must be a string; got {_kind(system)}", model_id=model_id)
    try:
        messages = normalize_messages(prompt, system)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        problem = text.removeprefix("prompt ") if text.startswith("prompt ") else f"is not valid: {text}"
        raise InvalidRequestError("prompt", problem, model_id=model_id) from None
    offset = 1 if system is not None else 0
    for i, message in enumerate(messages):
        problem = _text_problem(message.content)
        if problem:
            if i < offset:
                where = "system"
            elif isinstance(prompt, str):
                where = "prompt"
            else:
                where = f"prompt[{i - offset}].content"
            raise InvalidRequestError(where, problem, model_id=model_id)
    return messages


def _real(value: Any, name: str, low: float, high: float, model_id: str, *, open_low: bool = False) -> float | None:
    if value is None:
        return None
    if (type(value) is float or type(value) is int) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        number = float(value)
        if math.isfinite(number) and (low < number if open_low else low <= number) and number <= high:
            return number
        kind = _number_kind(value, "out of that range" if math.isfinite(number) else "that is not finite")
    else:
        kind = _kind(value)
    bounds = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
    raise InvalidRequestError(name, f"must be a finite number in {bounds}; got {kind}", model_id=model_id)


def _integer(value: Any, name: str, model_id: str, *, positive: bool = False) -> int | None:
    if value is None:
        return None
    if type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        number = int(value)
        if number > 0 or not positive:
            return number
        kind = _number_kind(value, "that is not positive")
    else:
        kind = _kind(value)
    raise InvalidRequestError(
        name, f"must be {'a positive' if positive else 'an'} integer; got {kind}", model_id=model_id
    )


def _timeout(value: Any, model_id: str) -> float:
    if (type(value) is float or type(value) is int) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        number = float(value)
        if math.isfinite(number) and number > 0:
            return number
        kind = _number_kind(value, "that is not finite" if not math.isfinite(number) else "that is not positive")
    else:
        kind = _kind(value)
    raise InvalidRequestError("timeout", f"must be a positive, finite number of seconds; got {kind}", model_id=model_id)


def _stop(stop: Any, model_id: str) -> tuple[str, ...] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        stops: tuple = (stop,)
    elif isinstance(stop, Sequence) and not isinstance(stop, bytes | bytearray):
        stops = tuple(stop)
    else:
        raise InvalidRequestError("stop", f"must be a string or a list of strings; got {_kind(stop)}",
                                  model_id=model_id)
    for i, item in enumerate(stops):
        where = "stop" if isinstance(stop, str) else f"stop[{i}]"
        if not isinstance(item, str):
            raise InvalidRequestError(where, f"must be a string; got {_kind(item)}", model_id=model_id)
        problem = _text_problem(item)
        if problem:
            raise InvalidRequestError(where, problem, model_id=model_id)
    return stops or None


#: Payload fields Ember sets itself (for any provider), and the parameter that sets each.
#: ``extra`` may not override them: ``extra={"model": ...}`` would send the request to
#: another model while usage is billed to the one named.
_RESERVED_EXTRA = {
    "model": "the model id (the first argument)",
    "messages": "the prompt",
    "system": "system=",
    "temperature": "temperature=",
    "top_p": "top_p=",
    "max_tokens": "max_tokens=",
    "max_completion_tokens": "max_tokens=",
    "stop": "stop=",
    "stop_sequences": "stop=",
    "seed": "seed=",
    "response_format": "response_format= or json_schema=",
    "timeout": "timeout=",
    "stream": None,
    "stream_options": None,
}


def _extra(extra: Any, model_id: str) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise InvalidRequestError("extra", f"must be a mapping of payload fields; got {_kind(extra)}",
                                  model_id=model_id)
    extra = dict(extra)
    body = extra.get("extra_body")
    if body is not None and not isinstance(body, Mapping):
        raise InvalidRequestError("extra['extra_body']", f"must be a mapping; got {_kind(body)}", model_id=model_id)
    for names, where in ((extra, "extra"), (body or {}, "extra['extra_body']")):
        for name in names:
            if not isinstance(name, str):
                raise InvalidRequestError(f"{where} keys", f"must be strings; got {_kind(name)}", model_id=model_id)
            if name in _RESERVED_EXTRA:
                instead = _RESERVED_EXTRA[name]
                problem = (
                    f"would override a field Ember sets itself; set it with {instead} instead"
                    if instead
                    else "is not a payload field: to stream, call service.stream(...) or models.stream(...) "
                    "(async: astream), which yield text deltas and then the full response"
                )
                raise InvalidRequestError(f"{where}[{name!r}]", problem, model_id=model_id)
    return extra


def _unexpected(exc: Exception, route: _Route, request: ChatRequest) -> ProviderError:
    """A non-Ember exception out of an adapter (an SDK refusing the request, a bug): typed, never retried."""
    logger.debug("%s: the %s adapter raised %s", request.model_id, route.adapter.settings.kind, type(exc).__name__,
                 exc_info=exc)
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    return ProviderError(
        f"the {route.adapter.settings.kind!r} adapter failed with {type(exc).__name__}"
        + (f": {detail}" if detail else "")
        + " (not retried: the same request would fail again)",
        model_id=request.model_id,
    )


async def _retry_or_raise(
    error: ModelError, attempt: int, route: _Route, request: ChatRequest, stats: CallStats, *, when: str = ""
) -> None:
    """After failed attempt ``attempt``: raise ``error`` (not retryable, or retries spent,
    saying how many attempts were made), else wait out the backoff before the next one."""
    if not error.retryable or attempt > route.max_retries:
        if attempt > 1:
            error.attempts = attempt
            error.args = (f"{error.args[0]} (gave up after {attempt} attempts)",)
        raise error
    delay = _backoff(attempt, route.backoff_base, route.backoff_max, error.retry_after)
    logger.info("%s: %s%s; retry %d in %.2f s", request.model_id, type(error).__name__, when, attempt, delay)
    stats.retries += 1
    stats.waiting_to_retry += 1
    try:
        await asyncio.sleep(delay)
    finally:
        stats.waiting_to_retry -= 1


def _backoff(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """Exponential backoff with jitter; a server's Retry-After is a floor, never cut short."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = retry_after + random.uniform(0, min(0.1 * retry_after, 1.0))
    return delay


def _response(
    request: ChatRequest, result: ProviderResult, usage: UsageStats, attempts: int, started: float, parsed: Any,
    repaired: bool = False,
) -> ModelResponse:
    return ModelResponse(
        text=result.text,
        model_id=request.model_id,
        usage=usage,
        latency_s=time.perf_counter() - started,
        finish_reason=result.finish_reason,
        attempts=attempts,
        cached=not attempts,
        parsed=parsed,
        repaired=repaired,
    )


def _parse_structured(request: ChatRequest, result: ProviderResult) -> BaseModel | None:
    if request.response_format is None:
        return None
    text = result.text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        return request.response_format.model_validate_json(text)
    except (ValidationError, json.JSONDecodeError, ValueError) as exc:
        raise MalformedResponseError(
            f"answer does not match {request.response_format.__name__}: {str(exc).splitlines()[0]}",
            snippet=result.text,
            model_id=request.model_id,
        ) from None


# -- structured output: what each server accepts, learnt once per process -------------------

#: Words by which a rejection names the structured-output field: OpenAI-style errors name
#: ``response_format`` (its ``param``/message), pydantic/FastAPI servers its location
#: (``'loc': ('body', 'response_format', 'type')``) and the values they accept ("Input should
#: be 'text' or 'json_object'"). A rejection whose text names none of them is the request's
#: other fault, never a reason to downgrade.
_FORM_MARKERS = ("response_format", "response format", "json_schema", "json_object")


def _rejects_form(error: ModelError) -> bool:
    """Whether ``error`` is a server refusing the structured-output form it was sent.

    A deterministic refusal (400, 422, or any non-retried 5xx such as llama-cpp-python's
    500 validation body) whose text names the structured-output field (:data:`_FORM_MARKERS`).
    A 404, a rate limit, a timeout or a plain (retryable) 500 never is.
    """
    status = getattr(error, "status_code", None)
    if status is None or error.retryable or not (status in (400, 422) or status >= 500):
        return False
    text = (error.args[0] if error.args else "").lower()
    return any(marker in text for marker in _FORM_MARKERS)


def _deterministic(error: ModelError) -> ModelError:
    """A retryable 5xx whose body is a request-validation error made non-retryable.

    The SDK path classifies it already (:func:`~ember.models.providers._sdk_errors.map_sdk_error`);
    this catches any adapter that did not: the same request fails the same way again.
    """
    status = getattr(error, "status_code", None)
    if error.retryable and status is not None and status >= 500 and is_request_validation_error(str(error)):
        error.retryable = False
    return error


class _Negotiation:
    """The structured-output form one server (provider name + base URL) accepts.

    Starts at the top of ``ladder`` (the provider's declared form, or its config override);
    each rejection of the form moves one step down, once, logged at INFO. A form that was
    answered, or the last one, is ``confirmed``: calls then go out at once in that form.
    """

    def __init__(self, ladder: tuple[StructuredOutput, ...], server: str = "") -> None:
        self.ladder = ladder
        self.server = server
        self.level = 0
        self.confirmed = len(ladder) == 1
        self._lock = threading.Lock()
        self._probe: asyncio.Lock | None = None
        self._probe_loop: asyncio.AbstractEventLoop | None = None

    @property
    def form(self) -> StructuredOutput:
        return self.ladder[self.level]

    def probe(self) -> asyncio.Lock:
        """One structured request at a time until the form is confirmed (on the I/O loop)."""
        loop = asyncio.get_running_loop()
        if self._probe is None or self._probe_loop is not loop:
            self._probe, self._probe_loop = asyncio.Lock(), loop
        return self._probe

    def confirm(self, form: StructuredOutput) -> None:
        with self._lock:
            if form == self.form:
                self.confirmed = True

    def downgrade(self, form: StructuredOutput, error: ModelError, model_id: str) -> bool:
        """Step down after ``error`` rejected ``form``; False when it is no such rejection or nothing is left."""
        with self._lock:
            if form != self.form:  # another call stepped down already: try the current form
                return True
            if not _rejects_form(error) or self.level + 1 >= len(self.ladder):
                return False
            self.level += 1
            self.confirmed = self.level == len(self.ladder) - 1
            lower = self.form
        logger.info(
            "%s: %s rejected structured output as %r (HTTP %s); using %r for it from now on, in this process",
            model_id, self.server or "the server", form, getattr(error, "status_code", "?"), lower,
        )
        return True


_NEGOTIATIONS: dict[tuple[str, str | None], _Negotiation] = {}
_NEGOTIATIONS_LOCK = threading.Lock()


def forget_negotiations() -> None:
    """Forget what every server was found to accept (e.g. a server replaced at the same URL; tests)."""
    with _NEGOTIATIONS_LOCK:
        _NEGOTIATIONS.clear()


def _negotiation(provider: str, base_url: str | None, ladder: tuple[StructuredOutput, ...]) -> _Negotiation:
    """The process-wide negotiation for one server; a changed ladder (a new config override) starts afresh."""
    key = (provider, base_url)
    with _NEGOTIATIONS_LOCK:
        negotiation = _NEGOTIATIONS.get(key)
        if negotiation is None or negotiation.ladder != ladder:
            negotiation = _NEGOTIATIONS[key] = _Negotiation(ladder, f"{provider} ({base_url or 'default URL'})")
        return negotiation


def _schema_instructions(schema: Mapping[str, Any]) -> tuple[str, str]:
    """The JSON schema as text, and the sentence that asks for an answer conforming to it."""
    text = json.dumps(schema, separators=(",", ":"))
    return text, f"Reply with only a JSON object (no prose, no code fence) that conforms to this JSON schema:\n{text}"


def _in_form(request: ChatRequest, form: StructuredOutput) -> ChatRequest:
    """``request`` asking for its schema as ``form``: below ``json_schema``, also in the prompt.

    JSON mode alone does not say which object (and a server may ignore the schema beside it);
    with ``none`` the prompt is all there is. The instruction is appended to the last user
    message, unless a message already carries the schema (an operator's specification writes
    its own instructions).
    """
    if request.structured_output == form:
        return request
    messages = request.messages
    if form != "json_schema" and request.output_schema is not None:
        schema_text, instruction = _schema_instructions(request.output_schema)
        if not any(schema_text in m.content for m in messages):
            last = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages) - 1)
            target = messages[last]
            messages = (*messages[:last], Message(target.role, f"{target.content}\n\n{instruction}"),
                        *messages[last + 1:])
    return dataclasses.replace(request, structured_output=form, messages=messages)


def _repair_request(request: ChatRequest, answer: str, error: MalformedResponseError) -> ChatRequest:
    """The one follow-up to an answer that failed validation: the answer, and why it failed."""
    reason = error.args[0].split("; response began:")[0] if error.args else "it is not valid"
    _, instruction = _schema_instructions(request.output_schema or {})
    messages = (*request.messages, Message("assistant", answer),
                Message("user", f"That answer was rejected: {reason}\n\n{instruction}"))
    return dataclasses.replace(request, messages=messages)
