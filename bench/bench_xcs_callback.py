"""LLM calls inside ``jax.jit(jax.vmap(...))`` through a host callback, against a bare asyncio loop.

1,000 prompt ids go through ``llm_callback`` under ``jax.jit(jax.vmap(...))``: one host
callback that fans out every call at once in a TaskGroup, through ModelService (per-model
budget of ``--concurrency``), to a loopback server in another process at 50 ms latency.
The baseline is a bare ``asyncio.gather`` over Ember's OpenAI provider adapter with a
semaphore of the same size. Prints each wall against the latency-bound limit
ceil(N / concurrency) x latency, and callback/bare. Each round uses a fresh callback and
fresh prompts (the memo would otherwise answer a repeat for free), compiled before the clock
starts; the answers are checked.

    python bench/bench_xcs_callback.py [--items 1000] [--concurrency 256] [--latency 0.05] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loopback import bare_calls, compare, loopback_process, numbered_prompts, point_ember_at

MODEL = "openai:gpt-4o-mini"


def callback_run(n: int, tag: str) -> Callable[[], int]:
    """A compiled ``jit(vmap(llm))`` over fresh prompts, ready to run once."""
    import jax
    import numpy as np

    from ember.xcs._callback import PromptTable, llm_callback

    table = PromptTable(numbered_prompts(n, tag))
    llm = llm_callback(MODEL, table)
    compiled = jax.jit(jax.vmap(llm)).lower(table.ids).compile()

    def run() -> int:
        out = np.asarray(compiled(table.ids))
        assert llm.host_calls == 1 and (out == np.arange(1, n + 1)).all()
        return llm.calls_started

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    limit = math.ceil(args.items / args.concurrency) * args.latency
    with loopback_process(args.latency) as base_url:
        point_ember_at(base_url, concurrency=args.concurrency)
        asyncio.run(bare_calls(10, args.concurrency, base_url, "warm"))  # SDK import, connections
        callback_run(10, "warm")()
        runs = iter([callback_run(args.items, f"round {r}") for r in range(args.repeat)])
        rounds = iter(range(args.repeat))
        work = {
            "bare": lambda: asyncio.run(bare_calls(args.items, args.concurrency, base_url, f"bare {next(rounds)}")),
            "callback": lambda: next(runs)(),
        }
        print(f"{args.items} ids in jit(vmap(llm_callback)), latency {args.latency * 1000:.0f} ms, "
              f"concurrency {args.concurrency}, {os.cpu_count()} CPUs, best of {args.repeat}")  # fmt: skip
        print(
            f"latency-bound limit: ceil({args.items}/{args.concurrency}) x {args.latency * 1000:.0f} ms = {limit:.2f} s"
        )
        compare(work, repeat=args.repeat, n_calls=args.items, limit=limit)


if __name__ == "__main__":
    main()
