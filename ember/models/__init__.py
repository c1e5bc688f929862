"""The models layer: registry, service, usage, providers and their typed errors."""

from ember.models._cache import ResponseCache
from ember.models._cluster_limits import ClusterBudget, join_budget, share_budget
from ember.models._errors import (
    BudgetExceededError,
    ContextLengthExceededError,
    EmberError,
    InvalidCredentialsError,
    InvalidRequestError,
    MalformedResponseError,
    MissingCredentialsError,
    ModelError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    ProviderNotFoundError,
    ProviderTimeoutError,
    RateLimitError,
    StreamInterruptedError,
)
from ember.models._factory import ModelFactory
from ember.models._info import ModelCost, ModelInfo, ProviderInfo, RateLimit
from ember.models._registry import ModelRegistry
from ember.models._service import CallStats, ModelService
from ember.models._stream import AsyncModelStream, ModelStream
from ember.models._types import ChatRequest, Message, ModelResponse, ProviderResult, UsageStats
from ember.models._usage import ModelUsage, UsageService, UsageTotals
from ember.models.providers import Provider, ProviderSettings, register_provider

__all__ = [
    "BudgetExceededError", "CallStats", "ChatRequest", "ClusterBudget", "ContextLengthExceededError", "EmberError",
    "InvalidCredentialsError", "InvalidRequestError",
    "MalformedResponseError", "Message", "MissingCredentialsError", "ModelCost", "ModelError", "ModelFactory",
    "ModelInfo", "ModelNotFoundError", "ModelRegistry", "ModelResponse", "ModelService", "ModelUsage",
    "Provider", "ProviderConnectionError", "ProviderError", "ProviderInfo", "ProviderNotFoundError",
    "ProviderResult", "ProviderSettings", "ProviderTimeoutError", "RateLimit", "RateLimitError",
    "ResponseCache", "StreamInterruptedError", "AsyncModelStream", "ModelStream", "UsageService", "UsageStats", "UsageTotals", "join_budget", "register_provider", "share_budget",
]
