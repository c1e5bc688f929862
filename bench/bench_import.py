"""Import cost: ``import ember`` (and the public API modules) against ``import jax``.

Each measurement is a fresh interpreter, best of N, so the OS page cache is warm but no
module is. Goal: ``import ember`` at most 0.3 s more than ``import jax``.

    python bench/bench_import.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

STATEMENTS = {
    "jax": "import jax",
    "ember": "import ember",
    "ember.api.models": "from ember.api.models import ModelService, ModelRegistry, ModelInfo",
    "ember + jax": "import ember, jax",
}


def time_import(statement: str, repeat: int) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(repeat)]
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = {name: time_import(stmt, args.repeat) for name, stmt in STATEMENTS.items()}
    for name, seconds in results.items():
        print(f"{name:<18} {seconds * 1000:8.1f} ms")
    extra = results["ember"] - results["jax"]
    print(f"import ember - import jax = {extra * 1000:+.1f} ms (goal <= +300 ms)")
    extra_api = results["ember.api.models"] - results["jax"]
    print(f"ember.api.models - import jax = {extra_api * 1000:+.1f} ms")


if __name__ == "__main__":
    main()
