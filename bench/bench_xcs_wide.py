"""A wide NON graph through ``execute_graph`` against a bare asyncio loop making the same calls.

2,000 items, each a query node -> a 5-way ensemble -> a judge (the judge also reads the
query), all in ONE graph of 6,000 nodes, run by the ``"parallel"`` scheduler with
``max_workers`` = the concurrency. The baseline is ``bench_eval_throughput.bare``: the same
12,000 calls on the same provider adapter, with a semaphore of the same size and nothing
else. The loopback server runs in its own process at 50 ms latency. Prints ember/bare
(goal <= 1.15), each wall time against the latency-bound limit, and calls/s.

    python bench/bench_xcs_wide.py [--items 2000] [--concurrency 256] [--latency 0.05] [--repeat 2]
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loopback import compare, loopback_process, point_ember_at, throughput_arguments
from bench_eval_throughput import MODEL, bare


def build_graph(n_items: int):
    from ember.non import JudgeSynthesis, UniformEnsemble
    from ember.operators import Operator
    from ember.xcs import XCSGraph

    class Query(Operator):
        """A source node: the item's query."""

        text: str

        def forward(self, *, inputs):
            return {"query": self.text}

    ensemble = UniformEnsemble(num_units=5, model_name=MODEL, temperature=0.7)
    judge = JudgeSynthesis(model_name=MODEL, temperature=0.0)
    graph = XCSGraph()
    for i in range(n_items):
        graph.add_node(operator=Query(f"What is {i} + 1?"), node_id=f"q{i}")
        graph.add_node(operator=ensemble, node_id=f"e{i}")
        graph.add_node(operator=judge, node_id=f"j{i}")
        graph.add_edge(from_id=f"q{i}", to_id=f"e{i}")
        graph.add_edge(from_id=f"q{i}", to_id=f"j{i}")
        graph.add_edge(from_id=f"e{i}", to_id=f"j{i}")
    return graph


def ember_run(graph, n_items: int, concurrency: int) -> int:
    from ember._runtime import UsageScope
    from ember.xcs import execute_graph, execution_options

    with UsageScope() as used:
        outputs = execute_graph(graph=graph, inputs={}, options=execution_options(scheduler="parallel", max_workers=concurrency))
    answers = {node_id: out.final_answer for node_id, out in outputs.items()}
    assert all(answers[f"j{i}"] == str(i + 1) for i in range(n_items)), list(answers.items())[:3]
    return used.calls


def main() -> None:
    args, n_calls, limit = throughput_arguments(__doc__.splitlines()[0])
    with loopback_process(args.latency) as base_url:
        point_ember_at(base_url, concurrency=args.concurrency)
        graph, warm = build_graph(args.items), build_graph(10)
        asyncio.run(bare(10, args.concurrency, base_url))  # warm both paths: SDK import, connections
        ember_run(warm, 10, args.concurrency)
        work = {
            "bare": lambda: asyncio.run(bare(args.items, args.concurrency, base_url)),
            "execute_graph": lambda: ember_run(graph, args.items, args.concurrency),
        }
        print(f"{args.items} items x (query -> 5-way ensemble -> judge) = {3 * args.items} nodes, {n_calls} calls, "
              f"latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, best of {args.repeat}")  # fmt: skip
        print(f"latency-bound limit: ceil({n_calls}/{args.concurrency}) x {args.latency * 1000:.0f} ms = {limit:.2f} s")
        compare(work, repeat=args.repeat, n_calls=n_calls, limit=limit)

if __name__ == "__main__":
    main()
