"""Run the loopback server in its own process, so that it does not share the benchmark
client's GIL: ``with loopback_process(latency=0.05) as url: ...``."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def loopback_process(latency: float = 0.0, *extra_args: str) -> Iterator[str]:
    """Start ``python -m ember.testing.server`` on a free port; yield its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ember.testing.server", "--latency", str(latency), *extra_args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stdout.readline()
        if "http://" not in first:
            raise RuntimeError(f"loopback server did not start: {first!r}")
        yield first[first.index("http://") :].strip()
    finally:
        process.terminate()
        process.wait(timeout=10)
