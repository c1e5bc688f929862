"""Ember's evaluation overhead against a bare asyncio loop, on the same client and server.

2,000 items x (5-way ensemble + judge) = 12,000 calls to a loopback server at 50 ms
latency, at concurrency 256 — once through ``ember.eval.compare_systems`` (pipeline, NON
operators, ModelService, journal), once as a bare ``asyncio.gather`` over the same
provider adapter (Ember's OpenAI client) with a semaphore of 256. Prints ember/bare
(goal <= 1.15), each wall time against the latency-bound limit ceil(12000/256) x 50 ms,
and calls/s. The two alternate ``--repeat`` times and the best wall of each counts, so a
neighbour's burst of CPU on a shared machine does not land on one side only; the CPU
seconds this process spent are printed too.

    python bench/bench_eval_throughput.py [--items 2000] [--concurrency 256] [--latency 0.05] [--repeat 2] [--transport sdk|lean]

Measured (``--transport lean --items 2000``, 2 CPUs shared with other jobs, so walls vary by
10-20% from run to run): with items running on Ember's I/O loop and the built-in operators'
native ``aforward`` (no worker thread and no loop crossing per item, journal records of
items that finish together committed in one transaction), ember/bare = 1.10, 1.10 and 1.08
in three runs of ``--repeat 3`` (bare 3.1-3.3 s, ember 3.4-3.6 s; CPU 1.3-1.5 s for Ember
against 0.8-0.9 s bare); 1.11 and 1.16 before the group commit. Before (each item's operator on a worker thread, its calls hopping from
the eval's loop to the I/O loop and back, one commit per item): 1.275. What is left is per
call in the models layer (``ModelService._prepare``/``_execute``, limiter, timeout), not in
the operators or the pipeline.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loopback import compare, loopback_process, point_ember_at, throughput_arguments

MODEL = "openai:gpt-4o-mini"


async def bare(n_items: int, concurrency: int, base_url: str, transport: str = "sdk") -> int:
    """The same calls, each item's five samples then its judge, on one adapter, with nothing else."""
    from pydantic import SecretStr

    from ember.models import ChatRequest, Message
    from ember.models.providers import ProviderSettings
    from ember.models.providers.openai import OpenAIProvider

    adapter = OpenAIProvider(ProviderSettings(name="openai", kind="openai", base_url=base_url, api_key=SecretStr("sk-bench"), timeout=120,
                                                transport=transport, max_connections=concurrency))
    slots = asyncio.Semaphore(concurrency)
    calls = 0

    async def call(text: str, temperature: float, sample: int) -> str:
        nonlocal calls
        async with slots:
            request = ChatRequest(model_name="gpt-4o-mini", model_id=MODEL, messages=(Message("user", text),),
                                  temperature=temperature, sample_index=sample)  # fmt: skip
            result = await adapter.acomplete(request)
        calls += 1
        return result.text

    async def item(i: int) -> str:
        query = f"What is {i} + 1?"
        answers = await asyncio.gather(*(call(query, 0.7, k) for k in range(5)))
        return await call(f"You are a judge.\n{query}\n" + "\n".join(answers), 0.0, 0)

    await asyncio.gather(*(item(i) for i in range(n_items)))
    await adapter.aclose()
    return calls


def ember_run(n_items: int, concurrency: int) -> int:
    from ember.data import DatasetItem
    from ember.eval import NumericEvaluator, compare_systems

    items = [DatasetItem(f"i{i}", f"What is {i} + 1?", str(i + 1)) for i in range(n_items)]
    with tempfile.TemporaryDirectory() as tmp:
        results = compare_systems(
            items, {"ens+judge": f"5:E:{MODEL}:0.7,1:J:{MODEL}:0.0"}, [NumericEvaluator()],
            concurrency=concurrency, journal=os.path.join(tmp, "bench.sqlite"), progress=False,
        )["ens+judge"]  # fmt: skip
    assert results.n_errors == 0 and results.accuracy == 1.0, results
    return results.calls


def main() -> None:
    args, n_calls, limit = throughput_arguments(__doc__.splitlines()[0])
    with loopback_process(args.latency) as base_url:
        point_ember_at(base_url, concurrency=args.concurrency, transport=args.transport)
        import ember.non  # noqa: F401 - import cost (JAX) is not part of the run being timed

        asyncio.run(bare(10, args.concurrency, base_url, args.transport))  # warm both paths: SDK import, connections
        ember_run(10, args.concurrency)
        work = {
            "bare": lambda: asyncio.run(bare(args.items, args.concurrency, base_url, args.transport)),
            "ember": lambda: ember_run(args.items, args.concurrency),
        }
        print(f"{args.items} items x (5-way ensemble + judge) = {n_calls} calls, latency {args.latency * 1000:.0f} ms, "
              f"concurrency {args.concurrency}, transport {args.transport}, {os.cpu_count()} CPUs, best of {args.repeat}")  # fmt: skip
        print(f"latency-bound limit: ceil({n_calls}/{args.concurrency}) x {args.latency * 1000:.0f} ms = {limit:.2f} s")
        compare(work, repeat=args.repeat, n_calls=n_calls, limit=limit)

if __name__ == "__main__":
    main()
