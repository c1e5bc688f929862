"""Scheduler overhead per node on a 10,000-node graph of trivial operators.

The graph: ``--wide`` independent nodes beside ``--chains`` chains of ``--length`` nodes
(default 5,000 + 50 x 100 = 10,000). Each node is an Ember operator (no specification)
that returns one field. A bare Python loop calling the same operators, in topological
order, with the same merged inputs, is the floor; each scheduler is reported as µs per
node (graph compilation, input merging, trace and usage scope included) and as a ratio to
the bare loop. Goal for "parallel": <= 30 µs per node. Best of ``--rounds`` rounds.

    python bench/bench_xcs_scheduler.py [--wide 5000] [--chains 50] [--length 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

from ember.operators import Operator
from ember.xcs import XCSGraph, execute_graph, execution_options


class Bump(Operator):
    """Returns ``{"v": <its constant>}``: as cheap as an Ember operator gets."""

    k: int

    def forward(self, *, inputs):
        return {"v": self.k}


def build(wide: int, chains: int, length: int) -> XCSGraph:
    graph = XCSGraph()
    for i in range(wide):
        graph.add_node(operator=Bump(i), node_id=f"w{i}")
    for c in range(chains):
        for j in range(length):
            graph.add_node(operator=Bump(j), node_id=f"c{c}_{j}")
            if j:
                graph.add_edge(from_id=f"c{c}_{j - 1}", to_id=f"c{c}_{j}")
    return graph


def bare_loop(graph: XCSGraph, inputs: dict) -> float:
    order = graph.topological_order()
    ops = {n: graph.nodes[n].operator for n in order}
    preds = {n: graph.predecessors(n) for n in order}
    begun = time.perf_counter()
    outputs = {}
    for n in order:
        merged = dict(inputs)
        for p in preds[n]:
            merged.update(outputs[p])
        outputs[n] = ops[n](inputs=merged)
    return time.perf_counter() - begun


def scheduled(graph: XCSGraph, inputs: dict, scheduler: str, workers: int | None) -> float:
    begun = time.perf_counter()
    execute_graph(graph=graph, inputs=inputs, outputs="all",
                  options=execution_options(scheduler=scheduler, max_workers=workers))
    return time.perf_counter() - begun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wide", type=int, default=5000)
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    graph = build(args.wide, args.chains, args.length)
    n = len(graph)
    inputs = {"seed": 0}
    base = min(bare_loop(graph, inputs) for _ in range(args.rounds))
    print(f"{n} nodes ({args.wide} independent + {args.chains} chains x {args.length})")
    print(f"{'bare loop':<32} {base / n * 1e6:8.1f} µs/node   1.00x")
    for scheduler, workers in (("sequential", None), ("wave", None), ("wave", 4), ("parallel", None), ("parallel", 4)):
        best = min(scheduled(graph, inputs, scheduler, workers) for _ in range(args.rounds))
        label = f"{scheduler} (max_workers={workers or 'default'})"
        print(f"{label:<32} {best / n * 1e6:8.1f} µs/node  {best / base:5.2f}x")


if __name__ == "__main__":
    main()
