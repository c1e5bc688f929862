"""Memory of a large streamed evaluation: 100,000 items against a 0 ms loopback server.

Items stream from a JSONL file through the pipeline into a SQLite journal; nothing holds
the whole dataset or all records. Prints peak RSS above the start (after imports, server
start and one warm-up call), sampled every 20 ms; goal under 300 MB.

    python bench/bench_eval_memory.py [--items 100000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _loopback import loopback_process, point_ember_at

MODEL = "openai:gpt-4o-mini"


class PeakRSS:
    """Samples this process's resident set size on a thread; ``peak`` is the largest seen."""

    def __init__(self, every: float = 0.02) -> None:
        self._process, self._every = psutil.Process(), every
        self.peak, self._stop = self._process.memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    from ember.data import DataLoader
    from ember.eval import ModelSystem, NumericEvaluator, compare_systems

    with tempfile.TemporaryDirectory() as tmp, loopback_process(0.0) as base_url:
        point_ember_at(base_url, concurrency=args.concurrency)
        path = os.path.join(tmp, "items.jsonl")
        with open(path, "w") as f:  # written line by line: the file is never in memory either
            for i in range(args.items):
                f.write(json.dumps({"id": f"i{i}", "query": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n")
        system = ModelSystem(MODEL)
        system.service.invoke_model(MODEL, "What is 1 + 1?")  # warm-up: SDK import, client, connection
        start_rss = psutil.Process().memory_info().rss
        started = time.perf_counter()
        with PeakRSS() as rss:
            results = compare_systems(
                DataLoader(path), {"single": system}, [NumericEvaluator()], concurrency=args.concurrency,
                journal=os.path.join(tmp, "run.sqlite"), progress=False,
            )["single"]  # fmt: skip
        wall = time.perf_counter() - started
    assert results.n_items == args.items and results.n_errors == 0 and results.accuracy == 1.0, results
    above = (rss.peak - start_rss) / 2**20
    print(f"{args.items} items streamed, concurrency {args.concurrency}: {wall:.1f} s, {args.items / wall:.0f} items/s")
    print(f"RSS at start {start_rss / 2**20:.0f} MB, peak {rss.peak / 2**20:.0f} MB, peak above start {above:.1f} MB "
          f"(goal < 300 MB: {'met' if above < 300 else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
