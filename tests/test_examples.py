"""Every script under ``examples/`` runs as a user would run it, and prints what it promises.

Each runs in a subprocess with this venv's python, from a temporary directory, with no provider
keys or ``EMBER_*`` settings, a temporary ``HOME`` and ``JAX_PLATFORMS=cpu``. A new example needs
an entry in ``EXPECTED`` (``test_every_example_is_covered`` fails until it has one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# script -> (extra arguments, substrings its stdout must contain, seconds allowed)
EXPECTED: dict[str, tuple[list[str], list[str], int]] = {
    "quickstart.py": (
        [],
        [
            "answers come from Ember's loopback server",
            "openai:gpt-4o                  -> '42'",
            "2 attempt(s)",  # the 429 on the second request was retried
            "8 concurrent calls -> ['0', '1', '4', '9', '16', '25', '36', '49']",
            "total: 10 calls",
        ],
        120,
    ),
    "non_networks.py": (
        [],
        ["judge: '391'", "at most 8 in flight at once", "held-out accuracy", "best: "],
        120,
    ),
    # The `make demo` job, on a smaller draw: the embedded SmolLM2 model on CPU.
    "eval_demo.py": (
        ["--items", "2", "--max-tokens", "4", "--judge-tokens", "16"],
        [
            "2 minibench items x 3 systems",
            "ensemble+vote",
            "ensemble+judge",
            "report: reports/eval_demo.json",
            "2 items x 3 systems in",
        ],
        600,
    ),
    # A local Ray instance: an evaluation and a graph on Ray workers.
    "ray_cluster.py": (
        ["--items", "40"],
        [
            "eval on Ray: 40 items, accuracy 1.00, 40 requests",
            "(limit 4, across every worker)",
            "resumed: 0 new requests",
            "graph on Ray: ensemble -> vote answered '42'",
        ],
        300,
    ),
}
SLOW = {"eval_demo.py", "ray_cluster.py"}


def _env(home: Path) -> dict[str, str]:
    drop = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "XLA_FLAGS", "RAY_ADDRESS"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("EMBER_")}
    env.update(HOME=str(home), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", COLUMNS="120")
    return env


def _params() -> list:
    return [
        pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [], id=name)
        for name in sorted(EXPECTED)
    ]


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", _params())
def test_example_runs(name: str, tmp_path: Path) -> None:
    args, expected, timeout = EXPECTED[name]
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=work,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    missing = [text for text in expected if text not in proc.stdout]
    assert not missing, f"{name}: {missing} not in its output:\n{proc.stdout[-3000:]}"
    if name == "eval_demo.py":
        report = json.loads((work / "reports" / "eval_demo.json").read_text())
        systems = report["systems"]
        assert sorted(systems) == ["ensemble+judge", "ensemble+vote", "single"]
        assert all(s["n_items"] == 2 and s["n_errors"] == 0 for s in systems.values()), systems
        assert list(work.glob("ember_runs/*.sqlite")), "no journal written"
