"""Ember's async call path against the raw async OpenAI SDK, same concurrency, same server.

Two scenarios (goal for both: ember / raw <= 1.15):
1. 0 ms latency: pure client CPU per call — the SDK's own cost is the floor.
2. 1,000 calls at 50 ms latency, concurrency 200: also printed against the latency-bound
   limit ceil(1000 / 200) x 50 ms, with calls per second.

The loopback server runs in a separate process. Each side is measured ``--rounds`` times,
alternating, and the best round of each is compared.

    python bench/bench_call_path.py [--calls 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _loopback import loopback_process

KEY = "bench-key"


async def raw_sdk(base_url: str, calls: int, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with gate:
            response = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"What is {i} + 1?"}]
            )
            return response.choices[0].message.content

    await asyncio.gather(*(one(i) for i in range(min(calls, concurrency))))  # warm: connections and imports
    start = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(calls)))
    elapsed = time.perf_counter() - start
    assert answers[7] == "8", answers[7]
    await client.close()
    return elapsed


async def ember_path(service, calls: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with gate:
            return (await service.ainvoke_model("openai:gpt-4o", f"What is {i} + 1?")).text

    await asyncio.gather(*(one(i) for i in range(min(calls, concurrency))))
    start = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(calls)))
    elapsed = time.perf_counter() - start
    assert answers[7] == "8", answers[7]
    return elapsed


def make_service(base_url: str, concurrency: int):
    from ember.config import create_config_manager
    from ember.models import ModelService

    config = create_config_manager(
        environ={},
        overrides={
            "model_registry": {
                "providers": {"openai": {"base_url": base_url, "api_key": KEY, "max_concurrency": concurrency}}
            }
        },
    )
    return ModelService(config_manager=config, cache=False)


def scenario(name: str, latency: float, calls: int, concurrency: int, rounds: int) -> None:
    with loopback_process(latency) as base_url:
        service = make_service(base_url, concurrency)
        raw, ember = [], []
        for _ in range(rounds):
            raw.append(asyncio.run(raw_sdk(base_url, calls, concurrency)))
            ember.append(asyncio.run(ember_path(service, calls, concurrency)))
        service.close()
    best_raw, best_ember = min(raw), min(ember)
    print(f"\n== {name}: {calls} calls, concurrency {concurrency}, server latency {latency * 1000:.0f} ms")
    print(f"raw AsyncOpenAI : {best_raw:7.3f} s  {calls / best_raw:7.0f} calls/s")
    print(f"ember async     : {best_ember:7.3f} s  {calls / best_ember:7.0f} calls/s")
    print(f"ember / raw     : {best_ember / best_raw:7.3f}   (goal <= 1.15)")
    if latency:
        limit = math.ceil(calls / concurrency) * latency
        print(f"latency-bound limit ceil({calls}/{concurrency}) x {latency * 1000:.0f} ms = {limit:.3f} s;"
              f" ember wall / limit = {best_ember / limit:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scenario("client CPU per call", 0.0, args.calls, 50, args.rounds)
    scenario("latency-bound", 0.05, args.calls, 200, args.rounds)


if __name__ == "__main__":
    main()
