"""Process-wide isolation for every pytest run: the suite under ``tests/`` and the doctests in ``ember/``.

Runs before anything is collected, so before any test module or docstring imports jax:

- 8 fake CPU devices for the sharding tests (XLA reads ``XLA_FLAGS`` once, at backend start);
- no real provider keys or endpoints and no ``EMBER_*`` settings from the developer's shell;
- ``HOME`` is a fresh temporary directory, so neither the user's Ember config nor caches are read.

Each doctest also runs in fresh process state; see ``_doctest_isolation``.
"""

import os
import sys
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No test may reach a real provider or cluster, or read the developer's own config.
_OUTSIDE = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "RAY_ADDRESS")
for _var in list(os.environ):
    if _var.startswith("EMBER_") or _var in _OUTSIDE:
        del os.environ[_var]
os.environ["HOME"] = tempfile.mkdtemp(prefix="ember-test-home-")

# Modules that are not importable on their own as doctest sources.
collect_ignore = [
    "ember/testing/pytest_plugin.py",  # already loaded by pytest as the `ember_testing` plugin
    "bench",
    "examples",
    "notebooks",
    "docs",
]


@pytest.fixture(autouse=True)
def _doctest_isolation(request):
    """Each doctest starts from fresh process state and leaves none behind.

    Docstrings show the real set-up a reader would type -- e.g. pointing ``OPENAI_BASE_URL`` at a
    :class:`ember.testing.LoopbackServer` -- so afterwards the environment is restored, and the
    process-wide config manager and app context are dropped before and after. The working
    directory is a temporary folder, so nothing a docstring writes lands in the checkout.
    """
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    from ember._context import reset_app_context
    from ember.config import set_config_manager

    def reset() -> None:
        context = getattr(sys.modules["ember._context"], "_context", None)
        if context is not None:
            context.model_service.close()
        reset_app_context()
        set_config_manager(None)

    saved = dict(os.environ)
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    reset()
    try:
        yield
    finally:
        reset()
        os.environ.clear()
        os.environ.update(saved)
