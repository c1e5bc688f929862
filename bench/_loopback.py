"""Shared by the eval benchmarks: a loopback server in its own process, and Ember pointed at it.

The server runs in a separate process so that its CPU and GIL are not the client's: on a
small machine the client's per-call cost is what is being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping

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


def point_ember_at(base_url: str, *, concurrency: int, transport: str | None = None) -> None:
    """Route ``openai:*`` to the server, with ``concurrency`` calls in flight per model
    (on ``transport`` ``sdk`` or ``lean`` when given; else the provider's default)."""
    os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"] = base_url, "sk-bench"
    from ember.config import get_config_manager

    openai = {"max_concurrency": concurrency, **({"transport": transport} if transport else {})}
    get_config_manager().update_config("model_registry", {"providers": {"openai": openai}, "default_timeout": 120})


def compare(
    work: Mapping[str, Callable[[], int]], *, repeat: int, n_calls: int, limit: float, goal: float = 1.15
) -> None:
    """Run each of ``work`` (baseline first, then the candidate) ``repeat`` times, alternating,
    so a burst of load on a shared machine does not land on one side only; print the best
    wall and CPU of each against the latency-bound ``limit``, then candidate / baseline.

    Each callable returns the number of calls it made, which must be ``n_calls``.
    """
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in work}
    for _ in range(repeat):
        for name, run in work.items():
            start, cpu = time.perf_counter(), time.process_time()
            calls = run()
            runs[name].append((time.perf_counter() - start, time.process_time() - cpu))
            assert calls == n_calls, (name, calls, n_calls)
    best = {name: min(times) for name, times in runs.items()}
    for name, (wall, cpu) in best.items():
        every = ", ".join(f"{w:.1f}" for w, _ in runs[name])
        print(f"{name:>13}: {wall:7.2f} s  ({wall / limit:5.1f} x limit)  {n_calls / wall:6.0f} calls/s  "
              f"cpu {cpu:6.1f} s  (walls: {every})")  # fmt: skip
    baseline, candidate = list(work)
    ratio = best[candidate][0] / best[baseline][0]
    print(f"{candidate}/{baseline} = {ratio:.3f}  (goal <= {goal}: {'met' if ratio <= goal else 'NOT met'})")


def throughput_arguments(description: str) -> tuple[argparse.Namespace, int, float]:
    """The options of the 2,000-item ensemble + judge benches; also the call count and the
    latency-bound limit ceil(calls / concurrency) x latency."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--transport", choices=["sdk", "lean"], default="sdk", help="the OpenAI adapter's transport")
    args = parser.parse_args()
    n_calls = args.items * 6
    return args, n_calls, math.ceil(n_calls / args.concurrency) * args.latency


def numbered_prompts(n: int, tag: str) -> list[str]:
    """``n`` arithmetic prompts the loopback server answers ``i + 1``; ``tag`` keeps rounds distinct."""
    return [f"What is {i} + 1? ({tag})" for i in range(n)]


async def bare_calls(n: int, concurrency: int, base_url: str, tag: str, model: str = "openai:gpt-4o-mini") -> int:
    """The baseline: the same calls on one OpenAI adapter and a semaphore, with nothing else."""
    from pydantic import SecretStr

    from ember.models import ChatRequest, Message
    from ember.models.providers import ProviderSettings
    from ember.models.providers.openai import OpenAIProvider

    settings = ProviderSettings(
        name="openai", kind="openai", base_url=base_url, api_key=SecretStr("sk-bench"), timeout=120
    )
    adapter = OpenAIProvider(settings)
    slots = asyncio.Semaphore(concurrency)
    name = model.partition(":")[2]

    async def call(text: str) -> str:
        async with slots:
            request = ChatRequest(model_name=name, model_id=model, messages=(Message("user", text),))
            return (await adapter.acomplete(request)).text

    answers = await asyncio.gather(*(call(p) for p in numbered_prompts(n, tag)))
    await adapter.aclose()
    assert answers == [str(i + 1) for i in range(n)], answers[:5]
    return len(answers)
