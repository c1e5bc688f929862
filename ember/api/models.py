"""Models API: the registry, the service, usage — and this module is itself callable.

With ``OPENAI_API_KEY`` set, ``models("openai:gpt-4o", "Hello").text`` asks OpenAI. Offline,
Ember's loopback server (:mod:`ember.testing`) stands in for it on 127.0.0.1:

>>> import os
>>> from ember.testing import LoopbackServer
>>> server = LoopbackServer().start()
>>> os.environ.update(server.environ())
>>> from ember.api import models
>>> models("openai:gpt-4o", "What is 17 + 25?").text
'42'
>>> server.close()

``models(...)`` is ``get_app_context().model_service.invoke_model(...)``.
"""

import sys
import types

from ember._context import get_app_context, initialize_ember
from ember.models import *  # noqa: F403  (the models layer's public surface)
from ember.models import AsyncModelStream, ModelResponse, ModelStream
from ember.models import __all__ as _models_all

__all__ = [*_models_all, "get_app_context", "initialize_ember", "acall", "stream", "astream"]


async def acall(model_id: str, prompt, **params) -> ModelResponse:
    """Async twin of ``models(model_id, prompt, **params)``."""
    return await get_app_context().model_service.ainvoke_model(model_id, prompt, **params)


def stream(model_id: str, prompt, **params) -> ModelStream:
    """Stream an answer: ``str`` deltas, then the full response (see ``ModelService.stream``).

    >>> import os
    >>> from ember.testing import LoopbackServer
    >>> server = LoopbackServer().start()
    >>> os.environ.update(server.environ())
    >>> *deltas, response = stream("openai:gpt-4o", "What is 6 * 7?")
    >>> "".join(deltas), response.text, response.usage.output_tokens > 0
    ('42', '42', True)
    >>> server.close()
    """
    return get_app_context().model_service.stream(model_id, prompt, **params)


def astream(model_id: str, prompt, **params) -> AsyncModelStream:
    """Async twin of :func:`stream`: ``async for item in models.astream(...)``."""
    return get_app_context().model_service.astream(model_id, prompt, **params)


class _CallableModule(types.ModuleType):
    def __call__(self, model_id: str, prompt, **params) -> ModelResponse:
        return get_app_context().model_service.invoke_model(model_id, prompt, **params)


sys.modules[__name__].__class__ = _CallableModule
