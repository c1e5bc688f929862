"""Ember on a Ray cluster: an evaluation and a graph spread over Ray workers, offline.

A local Ray instance stands in for a cluster (pass ``--address ray://...`` or set
``RAY_ADDRESS`` to join a real one), and Ember's loopback server stands in for OpenAI. It
shows:

- ``EvaluationPipeline(..., backend="ray")``: items run on the workers, the journal stays
  here, and the per-model limit (4) holds across all workers at once;
- a resumed run asking for nothing (the driver's journal is the single source of truth);
- an ensemble -> judge graph with ``execution_options(scheduler="ray")``.

The environment (here the server's address and a key) is set before Ray starts, so the
workers inherit it: keys never travel as task arguments. See ``docs/ray.md``.

    python examples/ray_cluster.py [--address ADDRESS] [--items 60]
"""

import argparse
import os
import tempfile
from pathlib import Path

from ember.testing import LoopbackServer

LIMIT = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", help="a Ray cluster to join (default: $RAY_ADDRESS, else a local instance)")
    parser.add_argument("--items", type=int, default=60)
    args = parser.parse_args()

    with LoopbackServer(latency=0.02) as server, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(server.environ())
        os.environ["EMBER_MODEL_REGISTRY__DEFAULT_MAX_CONCURRENCY"] = str(LIMIT)
        print(f"NOTE: answers come from Ember's loopback server at {server.url}, not a real provider.")

        from ember._runtime import connect_ray
        from ember.api import non
        from ember.data import DatasetItem
        from ember.eval import EvaluationPipeline, NumericEvaluator
        from ember.xcs import XCSGraph, execute_graph, execution_options

        ray = connect_ray(args.address, num_cpus=2)
        print(f"Ray: {len(ray.nodes())} node(s), {int(ray.cluster_resources().get('CPU', 0))} CPUs")

        items = [DatasetItem(f"q{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(args.items)]
        journal = Path(tmp) / "ray_eval.sqlite"

        def evaluate():
            pipeline = EvaluationPipeline(
                items, [NumericEvaluator()], "openai:gpt-4o", backend="ray", ray_address=args.address,
                journal=journal, progress=False,
            )  # fmt: skip
            return pipeline.evaluate()

        results = evaluate()
        print(f"eval on Ray: {results.n_items} items, accuracy {results.accuracy:.2f}, {server.stats.total} requests, "
              f"at most {server.stats.max_in_flight} in flight (limit {LIMIT}, across every worker)")  # fmt: skip
        before = server.stats.total
        evaluate()
        print(f"resumed: {server.stats.total - before} new requests")

        graph = XCSGraph()
        graph.add_node(operator=non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o"), node_id="ensemble")
        graph.add_node(operator=non.MostCommon(), node_id="vote")
        graph.add_edge(from_id="ensemble", to_id="vote")
        with execution_options(scheduler="ray", ray_address=args.address):
            out = execute_graph(graph=graph, inputs={"query": "What is 17 + 25?"})
        print(f"graph on Ray: ensemble -> vote answered {out.final_answer!r}")
        ray.shutdown()


if __name__ == "__main__":
    main()
