"""Pytest fixtures for the loopback server, registered through the ``pytest11`` entry point.

Every pytest run with Ember installed loads this module, so it imports nothing beyond
pytest up front: the server is imported the first time a test asks for a fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ember.testing import LoopbackServer


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A running :class:`~ember.testing.LoopbackServer` with default settings, closed after the test.

    Reconfigure it in the test (``server.latency``, ``server.faults``, ``server.responder``)."""
    from ember.testing import LoopbackServer

    with LoopbackServer() as server:
        yield server


@pytest.fixture
def loopback_server_factory() -> Iterator[Callable[..., LoopbackServer]]:
    """Start servers with any :class:`~ember.testing.LoopbackServer` arguments; all close after the test."""
    from ember.testing import LoopbackServer

    servers: list[LoopbackServer] = []

    def make(**kwargs: Any) -> LoopbackServer:
        servers.append(LoopbackServer(**kwargs).start())
        return servers[-1]

    yield make
    for server in servers:
        server.close()
