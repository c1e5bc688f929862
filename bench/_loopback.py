"""Shared by the eval benchmarks: a loopback server in its own process, and Ember pointed at it.

The server runs in a separate process so that its CPU and GIL are not the client's: on a
small machine the client's per-call cost is what is being measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

JUDGE_JSON = '{"reasoning": "the candidates agree", "final_answer": "%s"}'


def responder(request) -> str:  # request: an ember.testing.LoopbackRequest
    """Arithmetic answers for generators; a well-formed JudgeSynthesis reply for judges."""
    text = request.last_user_message
    numbers = re.findall(r"What is (\d+) \+ 1\?", text)
    answer = str(int(numbers[0]) + 1) if numbers else "0"
    return JUDGE_JSON % answer if "You are a judge" in text else answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_process(latency: float) -> Iterator[str]:
    """Start ``python -m ember.testing.server`` with :func:`responder`; yields the OpenAI base URL."""
    port = _free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "ember.testing.server", "--port", str(port), "--latency", str(latency),
           "--responder", "_loopback:responder"]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if server.poll() is not None:
                raise RuntimeError(f"loopback server exited: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(10)


def point_ember_at(base_url: str, *, concurrency: int) -> None:
    """Route ``openai:*`` to the server, with ``concurrency`` calls in flight per model."""
    os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"] = base_url, "sk-bench"
    from ember.config import get_config_manager

    get_config_manager().update_config(
        "model_registry", {"providers": {"openai": {"max_concurrency": concurrency}}, "default_timeout": 120}
    )
