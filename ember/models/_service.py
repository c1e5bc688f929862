"""ModelService: the one door every model call in Ember goes through.

The call path, in order: resolve the model (registry + config, cached per config
revision) -> response cache -> RPM/TPM budget -> a concurrency slot -> the provider
adapter under a timeout -> on a transient failure, release the slot, back off (honouring
Retry-After) and try again -> price the usage -> record it -> cache it.

Everything after "resolve" runs on Ember's I/O loop (:mod:`ember._runtime._loop`), so the
limits are one process-wide budget however the caller is parallelised.

Each call also reports to the runtime's scopes (:mod:`ember._runtime`): its future is
owned by the current cancel scope, so a failed sibling, an abandoned evaluation item or
Ctrl-C cancels it and closes its HTTP request; and its tokens, cost and attempts are
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
import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ember._runtime import UsageScope, _loop, current_scope, current_usage_scope
from ember.models._cache import ResponseCache, cache_key
from ember.models._errors import MalformedResponseError, ModelError, ProviderTimeoutError
from ember.models._factory import ModelFactory
from ember.models._info import ModelInfo
from ember.models._limits import ModelLimiter
from ember.models._registry import ModelRegistry
from ember.models._types import ChatRequest, Message, ModelResponse, ProviderResult, UsageStats, normalize_messages
from ember.models._usage import UsageService
from ember.models.providers._base import Provider

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
    timeout: float
    max_retries: int
    backoff_base: float
    backoff_max: float


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
        self._lock = threading.Lock()

    # -- public API ---------------------------------------------------------------------
    def invoke_model(self, model_id: str, prompt: Prompt, **params: Any) -> ModelResponse:
        """Call ``model_id`` and wait for the answer.

        ``params``: ``system``, ``temperature``, ``max_tokens``, ``stop``, ``seed``,
        ``top_p``, ``response_format`` (a pydantic model: the answer is validated into
        ``response.parsed``), ``json_schema`` (a schema the provider should constrain the
        answer to, left unvalidated), ``sample_index`` (tells repeated samples apart),
        ``timeout`` (seconds), and ``extra`` (provider-specific payload fields).
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
        """Async twin of :meth:`invoke_model`, awaitable from any event loop."""
        route, request = self._prepare(model_id, prompt, params)
        scope = current_scope()
        if scope is not None:
            scope.check()
        return await _loop.run_on_io_loop(self._execute(route, request, current_usage_scope()))

    acall = ainvoke_model

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
        route = self._route(model_id)
        unknown = set(params) - _PARAMS
        if unknown:
            raise TypeError(f"unknown parameter(s) for invoke_model: {', '.join(sorted(unknown))}")
        stop = params.get("stop")
        response_format = params.get("response_format")
        if response_format is not None and not (
            isinstance(response_format, type) and issubclass(response_format, BaseModel)
        ):
            raise TypeError(f"response_format must be a pydantic model class, got {response_format!r}")
        request = ChatRequest(
            model_name=route.info.api_name,
            model_id=model_id,
            messages=normalize_messages(prompt, params.get("system")),
            temperature=params.get("temperature"),
            max_tokens=params.get("max_tokens"),
            stop=(stop,) if isinstance(stop, str) else tuple(stop) if stop else None,
            seed=params.get("seed"),
            top_p=params.get("top_p"),
            response_format=response_format,
            json_schema=params.get("json_schema"),
            sample_index=int(params.get("sample_index", 0)),
            timeout=float(params.get("timeout") or route.timeout),
            extra=dict(params.get("extra") or {}),
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
        route = _Route(
            info=info,
            adapter=adapter,
            limiter=self._limiter(info, provider_config, section.default_max_concurrency),
            timeout=adapter.settings.timeout,
            max_retries=section.max_retries,
            backoff_base=section.backoff_base,
            backoff_max=section.backoff_max,
        )
        with self._lock:
            if len(self._routes) >= _MAX_ROUTES:  # every config scope is a new revision: stay bounded
                self._routes.clear()
            self._routes[key] = route
        return route

    def _limiter(self, info: ModelInfo, provider_config: Any, default_concurrency: int) -> ModelLimiter:
        """One limiter per model id for the process; created on the I/O loop's behalf."""

        def pick(field: str) -> Any:
            value = getattr(info.rate_limit, field)
            return value if value is not None else getattr(provider_config, field, None)

        limits = (pick("max_concurrency") or default_concurrency, pick("rpm"), pick("tpm"))
        with self._lock:
            limiter = self._limiters.get(info.id)
            if limiter is None or (limiter.max_concurrency, limiter.rpm, limiter.tpm) != limits:
                limiter = self._limiters[info.id] = ModelLimiter(*limits)
            return limiter

    def _cache(self) -> ResponseCache | None:
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
    async def _execute(self, route: _Route, request: ChatRequest, scope: UsageScope | None) -> ModelResponse:
        started = time.perf_counter()
        stats = self.stats
        stats.started += 1
        cache = self._cache()
        key = cache_key(request.model_id, request) if cache is not None else None
        result = cache.get(key) if cache is not None else None
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
        if attempts and cache is not None:
            cache.put(key, request.model_id, result)
        # Answered means billed: usage is recorded even if the answer fails validation below.
        cost = route.info.cost.cost(result.input_tokens, result.output_tokens) if attempts else 0.0
        usage = UsageStats(result.input_tokens, result.output_tokens, cost)
        if attempts:
            self.usage_service.add_usage_record(request.model_id, usage)
        if scope is not None:
            scope.record(usage, attempts=attempts)
        try:
            parsed = _parse_structured(request, result)
        except ModelError:
            stats.failed += 1
            raise
        stats.succeeded += 1
        return ModelResponse(
            text=result.text,
            model_id=request.model_id,
            usage=usage,
            latency_s=time.perf_counter() - started,
            finish_reason=result.finish_reason,
            attempts=attempts,
            cached=not attempts,
            parsed=parsed,
        )

    async def _call_with_retries(self, route: _Route, request: ChatRequest) -> tuple[ProviderResult, int]:
        limiter, stats = route.limiter, self.stats
        estimate = sum(len(m.content) for m in request.messages) // 4 + (request.max_tokens or 256)
        attempt = 0
        while True:
            attempt += 1
            await limiter.admit(estimate)
            async with limiter.slots:
                stats.in_flight += 1
                try:
                    result = await asyncio.wait_for(route.adapter.acomplete(request), request.timeout)
                    limiter.settle(estimate, result.input_tokens + result.output_tokens)
                    return result, attempt
                except TimeoutError:
                    error: ModelError = ProviderTimeoutError(
                        f"no answer within {request.timeout:g} s", model_id=request.model_id, retryable=True
                    )
                except ModelError as exc:
                    error = exc
                finally:
                    stats.in_flight -= 1
            if not error.retryable or attempt > route.max_retries:
                if attempt > 1:
                    error.attempts = attempt
                    error.args = (f"{error.args[0]} (gave up after {attempt} attempts)",)
                raise error
            delay = _backoff(attempt, route.backoff_base, route.backoff_max, error.retry_after)
            logger.info("%s: %s; retry %d in %.2f s", request.model_id, type(error).__name__, attempt, delay)
            stats.retries += 1
            stats.waiting_to_retry += 1
            try:
                await asyncio.sleep(delay)
            finally:
                stats.waiting_to_retry -= 1


_MAX_ROUTES = 4096
_PARAMS = frozenset(
    {"system", "temperature", "max_tokens", "stop", "seed", "top_p", "response_format", "json_schema", "sample_index",
     "timeout", "extra"}
)


def _backoff(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """Exponential backoff with jitter; a server's Retry-After is a floor, never cut short."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = retry_after + random.uniform(0, min(0.1 * retry_after, 1.0))
    return delay


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
