"""The test suite's fixtures, all in this one module (shared helpers that are not fixtures live in
``tests/helpers.py``):

- ``loopback_models`` routes ``openai:*`` and ``anthropic:*`` to a loopback server;
- ``smollm`` is the embedded SmolLM2 model, loaded once per session;
- ``loopback_server`` and ``loopback_server_factory`` come from Ember's pytest plugin.

The process-wide isolation (8 fake CPU devices, no real provider keys, a temporary ``HOME``) is
set up by the repository root's ``conftest.py``, before any test module imports jax, so that it
applies to the doctests under ``ember/`` as well.
"""

import types

import pytest

LOOPBACK_KEY = "sk-loopback-planted-key-0123456789"


@pytest.fixture
def loopback_models(monkeypatch, tmp_path):
    """A fresh app context whose ``openai:*`` / ``anthropic:*`` calls hit a loopback server.

    Yields a namespace with ``server`` (:class:`ember.testing.LoopbackServer`), ``service``
    (the context's :class:`ModelService`), ``config`` (its ConfigManager) and ``key`` (the
    planted API key, which must never leak).
    """
    from ember._context import get_app_context, reset_app_context
    from ember.config import create_config_manager, set_config_manager
    from ember.testing import LoopbackServer

    with LoopbackServer() as server:
        for name, value in server.environ(LOOPBACK_KEY).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        manager = create_config_manager()
        # Fast, still exponential, backoff keeps retry tests quick.
        manager.update_config("model_registry", {"backoff_base": 0.02, "backoff_max": 0.5})
        set_config_manager(manager)
        reset_app_context()
        service = get_app_context().model_service
        try:
            yield types.SimpleNamespace(server=server, service=service, config=manager, key=LOOPBACK_KEY)
        finally:
            service.close()
            set_config_manager(None)
            reset_app_context()


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct, loaded once for every test that needs it."""
    from ember.local import load_model

    return load_model()
