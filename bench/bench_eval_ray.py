"""The Ray backend against the single-process run: 2,000 items at 50 ms latency.

One model call per item to a loopback server (its own process) at ``--latency``, with a
per-model limit of ``--concurrency`` calls in flight — cluster-wide on Ray, so both runs are
held to the same budget. The single-process run and the Ray run (a local instance with
``--workers`` CPUs, so that many task workers) alternate ``--repeat`` times after one
warm-up Ray run (worker start-up and imports are paid once per cluster, not per run).
Prints each wall against the latency-bound limit ceil(items / concurrency) x latency, the
ratio ray/local, the per-item overhead, the driver's CPU per item, and a projection for 10
and 100 workers.

    python bench/bench_eval_ray.py [--items 2000] [--concurrency 64] [--latency 0.05] [--workers 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loopback import loopback_process, point_ember_at

MODEL = "openai:gpt-4o-mini"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    limit = math.ceil(args.items / args.concurrency) * args.latency

    with loopback_process(args.latency) as base_url, tempfile.TemporaryDirectory() as tmp:
        point_ember_at(base_url, concurrency=args.concurrency)  # sets the key in the env before Ray starts
        from ember._runtime import connect_ray
        from ember.data import DatasetItem
        from ember.eval import EvaluationPipeline, NumericEvaluator

        items = [DatasetItem(f"i{i}", f"What is {i} + 1?", str(i + 1)) for i in range(args.items)]
        ray = connect_ray(num_cpus=args.workers)
        runs = 0

        def run(backend: str, data=items) -> tuple[float, float]:
            nonlocal runs
            runs += 1
            start, cpu = time.perf_counter(), time.process_time()
            results = EvaluationPipeline(data, [NumericEvaluator()], MODEL, backend=backend, progress=False,
                                         concurrency=args.concurrency, journal=f"{tmp}/{runs}.sqlite").evaluate()  # fmt: skip
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            assert results.n_items == len(data) and results.accuracy == 1.0, results
            return wall, cpu

        warm = run("ray", items[: 64 * args.workers])
        print(f"warm-up (worker start-up, imports): {warm[0]:.2f} s")
        from ember.models._cluster_limits import limits_actor

        actor, grants = limits_actor(ray), 0
        walls: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        for _ in range(args.repeat):
            for backend in walls:
                before = ray.get(actor.grants.remote())
                walls[backend].append(run(backend))
                grants = ray.get(actor.grants.remote()) - before
        best = {name: min(times) for name, times in walls.items()}
        for name, (wall, cpu) in best.items():
            every = ", ".join(f"{w:.2f}" for w, _ in walls[name])
            print(f"{name:>6}: {wall:6.2f} s ({wall / limit:4.2f} x limit {limit:.2f} s)  {args.items / wall:6.0f} items/s  "
                  f"driver cpu {cpu:5.2f} s  (walls: {every})")  # fmt: skip
        ratio = best["ray"][0] / best["local"][0]
        overhead_ms = (best["ray"][0] - best["local"][0]) / args.items * 1e3
        driver_ms = best["ray"][1] / args.items * 1e3
        print(
            f"ray/local = {ratio:.3f}; overhead {overhead_ms:+.3f} ms per item; driver cpu {driver_ms:.3f} ms per item"
        )
        permits = actor_rate(ray, args.concurrency)
        per_item = grants / args.items
        print(f"limits actor: {permits:.0f} acquire+release pairs/s; {per_item:.2f} leases granted per item "
              f"(a call needs its model's and its provider's slot; the rest pass between calls in a worker)")  # fmt: skip
        # On paper, items/s with N workers is the least of: the cluster-wide budget (concurrency / latency,
        # the same for any N: that is the point), N x one worker's rate (measured here, on shared cores: a
        # floor), the driver's commit rate (1 / its CPU per item), and the limits actor's grant rate / grants per item.
        budget_rate, per_worker = args.concurrency / args.latency, args.items / best["ray"][0] / args.workers
        for n in (10, 100):
            bounds = {
                "budget": budget_rate,
                "workers": n * per_worker,
                "driver": 1e3 / driver_ms,
                "actor": permits / max(per_item, 1e-3),
            }
            name = min(bounds, key=bounds.get)
            print(f"{n:>3} workers: " + ", ".join(f"{k} {v:.0f}" for k, v in bounds.items())
                  + f" items/s -> {bounds[name]:.0f} items/s ({name}-bound)")  # fmt: skip
        ray.shutdown()


def actor_rate(ray, concurrency: int, n: int = 4000) -> float:
    """Acquire+release pairs per second at the limits actor, from one client with ``concurrency`` in flight."""
    import asyncio

    from ember.models._cluster_limits import limits_actor

    actor = limits_actor(ray)

    async def pairs() -> None:
        async def one() -> None:
            lease = await actor.acquire.remote("bench", concurrency)
            await actor.release.remote(lease)

        for start in range(0, n, concurrency):
            await asyncio.gather(*(one() for _ in range(min(concurrency, n - start))))

    start = time.perf_counter()
    asyncio.run(pairs())
    return n / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
