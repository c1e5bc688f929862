"""Offline stand-ins for LLM providers, for tests, benchmarks and users' own pipelines.

:class:`LoopbackServer` speaks the OpenAI and Anthropic HTTP APIs on 127.0.0.1 with
scripted answers, latency and injected faults, and records every request it sees. The
pytest fixtures ``loopback_server`` and ``loopback_server_factory`` come with it, and
``python -m ember.testing.server`` runs it standalone.
"""

from ember.testing._answer import Responder, count_tokens, default_responder
from ember.testing._faults import Fault
from ember.testing._records import RequestRecord, ServerStats
from ember.testing._request import LoopbackRequest
from ember.testing._server import LoopbackServer

__all__ = [
    "LoopbackServer",
    "LoopbackRequest",
    "Responder",
    "default_responder",
    "count_tokens",
    "Fault",
    "RequestRecord",
    "ServerStats",
]
