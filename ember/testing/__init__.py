"""Offline stand-ins for LLM providers, for tests, benchmarks and users' own pipelines.

:class:`LoopbackServer` speaks the OpenAI and Anthropic HTTP APIs on 127.0.0.1 with
scripted answers, latency and injected faults, and records every request it sees. The
pytest fixtures ``loopback_server`` and ``loopback_server_factory`` come with it, and
``python -m ember.testing.server`` runs it standalone.

Names are imported on first use: the pytest plugin makes every test run import this
package, and most runs never start a server.
"""

import importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from ember.testing._answer import Responder as Responder
    from ember.testing._answer import count_tokens as count_tokens
    from ember.testing._answer import default_responder as default_responder
    from ember.testing._faults import Fault as Fault
    from ember.testing._records import RequestRecord as RequestRecord
    from ember.testing._records import ServerStats as ServerStats
    from ember.testing._request import LoopbackRequest as LoopbackRequest
    from ember.testing._server import LoopbackServer as LoopbackServer

_MODULES = {
    "LoopbackServer": "_server",
    "LoopbackRequest": "_request",
    "Responder": "_answer",
    "default_responder": "_answer",
    "count_tokens": "_answer",
    "Fault": "_faults",
    "RequestRecord": "_records",
    "ServerStats": "_records",
}
__all__ = list(_MODULES)


def __getattr__(name: str) -> _Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
