"""Code execution: run a model's program against an item's tests, in a limited subprocess.

The program is the output's first fenced code block (or the whole output), followed by
the tests in ``item.metadata["tests"]`` (plain asserts); it passes when the process exits
0. Limits: wall time (``timeout``, the process group is killed), and — set by a prelude
before the program runs, not by ``preexec_fn``, which can deadlock a threaded parent —
address space, CPU time and file size (``setrlimit``), and no network or process
spawning: an audit hook refuses socket, subprocess, fork/exec and ctypes events. That stops the accidents model-written code makes (a stray HTTP call, a
runaway loop, a huge allocation); it is not a boundary against a determined adversary,
for which run the evaluation inside a container.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ember.data import DatasetItem
from ember.eval._evaluator import EvaluationResult, Evaluator

__all__ = ["CodeExecutionEvaluator", "extract_code"]

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_GUARD = '''\
import resource, sys
for _limit, _value in (("RLIMIT_AS", {memory}), ("RLIMIT_CPU", {cpu}), ("RLIMIT_FSIZE", 16 * 2**20)):
    resource.setrlimit(getattr(resource, _limit), (_value, _value))
def _ember_guard(event, args, _blocked=("subprocess.", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
                                        "os.fork", "os.forkpty", "pty.", "ctypes.", "socket.")):
    if event.startswith(_blocked):
        raise PermissionError("blocked by the evaluation sandbox: " + event)
sys.addaudithook(_ember_guard)
del _ember_guard, _limit, _value, resource
'''


def extract_code(output: str) -> str:
    """The first fenced code block of ``output``, or all of it when there is none."""
    found = _FENCE.search(output)
    return found.group(1) if found else output


class CodeExecutionEvaluator(Evaluator):
    """Passes when the extracted program plus ``item.metadata[tests_key]`` exits 0 within the limits."""

    name = "pass"

    def __init__(self, *, timeout: float = 10.0, memory_mb: int = 512, tests_key: str = "tests", max_parallel: int | None = None) -> None:
        self.timeout, self.memory_mb, self.tests_key = timeout, memory_mb, tests_key
        self._slots = threading.BoundedSemaphore(max_parallel or os.cpu_count() or 1)

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        tests = item.metadata.get(self.tests_key)
        if not tests:
            raise ValueError(f"item {item.id!r} has no metadata[{self.tests_key!r}] to run the code against")
        guard = _GUARD.format(memory=self.memory_mb * 2**20, cpu=int(self.timeout) + 1)
        program = f"{guard}\n{extract_code(output)}\n\n{tests}\n"
        with self._slots, tempfile.TemporaryDirectory(prefix="ember-code-") as workdir:
            path = Path(workdir) / "program.py"
            path.write_text(program)
            process = subprocess.Popen(
                [sys.executable, "-I", str(path)], cwd=workdir, env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,
            )  # fmt: skip
            try:
                _, stderr = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return EvaluationResult.binary(False, status="timeout", stderr="")
        err = stderr.decode(errors="replace")[-800:]
        if process.returncode == 0:
            status = "passed"
        elif "MemoryError" in err or process.returncode in (-signal.SIGKILL, -signal.SIGXCPU):
            status = "resource limit"
        elif "blocked by the evaluation sandbox" in err:
            status = "blocked"
        else:
            status = "failed"
        return EvaluationResult.binary(process.returncode == 0, status=status, stderr=err)

    async def aevaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        return await asyncio.to_thread(self.evaluate, output, item)
