"""Code execution: run a model's program against an item's tests, isolated, with limits that hold.

The program is the output's first fenced code block (or the whole output); the tests are
``item.metadata["tests"]`` (plain asserts). A harness runs both in one namespace and, only when
the last test has run, prints a token drawn fresh for that evaluation; the program passes when
that token comes back. Where the program runs, and what it can reach, is
:mod:`ember.eval._sandbox`'s business; :class:`CodeExecutionEvaluator` says what that means.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import threading
import warnings
from typing import Literal

from ember._runtime import EmberError, redact
from ember.data import DatasetItem
from ember.eval._evaluator import EvaluationResult, Evaluator
from ember.eval._sandbox import SETUP_FAILED, Limits, Outcome, isolation, run_python

__all__ = ["CodeExecutionEvaluator", "extract_code"]

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_PASS_MARK = "ember-tests-passed:"
_BLOCKED = "blocked by the evaluation sandbox"
_EARLY = "exited before the tests finished"
_EXITED_EARLY = 3  # the harness's exit status when the program raised SystemExit
_STDERR_CHARS = 1000  # of the program's stderr (its end: the traceback), kept in the result
# Audit events the harness refuses; isolated, ctypes is no escape (and numpy needs it).
_BLOCKED_EVENTS = ("subprocess.", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "pty.", "socket.")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)

# The child's main program. The token arrives on stdin, which is then replaced by /dev/null, so
# the program never sees it there or in its environment (nor, isolated, in any /proc file).
_HARNESS = f'''\
import os, sys, traceback


def _guard(event, args, _blocked=@BLOCKED@):
    if event.startswith(_blocked):
        raise PermissionError("{_BLOCKED}: " + event)


def _main():
    token = os.read(0, 256).strip().decode()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    err, write, exit_now = sys.stderr, os.write, os._exit
    namespace = {{"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}}
    try:
        units = []
        for name in ("solution.py", "tests.py"):
            with open(name, encoding="utf-8", errors="replace") as f:
                units.append(compile(f.read(), name, "exec"))
        sys.addaudithook(_guard)
        for unit in units:
            exec(unit, namespace)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except SystemExit as exc:
        print("ember: the program called exit(" + repr(exc.code) + ") and {_EARLY}", file=err, flush=True)
        exit_now({_EXITED_EARLY})
    except BaseException:
        traceback.print_exc(file=err)
        err.flush()
        exit_now(1)
    write(1, ("\\n{_PASS_MARK}" + token + "\\n").encode())
    exit_now(0)  # no atexit hook or lingering thread of the program's runs after the verdict


_main()
'''

_warned = False
_warn_lock = threading.Lock()


def extract_code(output: str) -> str:
    """The first fenced code block of ``output``, or all of it when there is none.

    >>> extract_code("Here:\\n```python\\nprint(1)\\n```\\nDone.")
    'print(1)\\n'
    """
    found = _FENCE.search(output)
    return found.group(1) if found else output


class CodeExecutionEvaluator(Evaluator):
    """Passes when the extracted program followed by ``item.metadata[tests_key]`` runs to the end within the limits.

    ``result.metadata`` holds ``status`` (``passed``, ``failed``, ``timeout``, ``resource limit``,
    ``output limit``, ``blocked``, ``exited early`` or ``sandbox error``), ``stderr`` (the last
    1,000 characters, redacted) and ``isolated``.

    **Threat model.** The program is untrusted: model-written, and possibly steered by a prompt
    injection in the data set. With ``isolation="auto"`` (the default) or ``"namespaces"``, on
    Linux where ``unshare`` may create namespaces (root with ``CAP_SYS_ADMIN``, or a user allowed
    unprivileged user namespaces), it runs in new PID, mount, network, IPC, UTS and cgroup
    namespaces (see :mod:`ember.eval._sandbox`):

    - it sees no process but its own, so not this process's environment (``/proc/<pid>/environ``)
      and its API keys; it gets a minimal environment of its own (``PATH``, ``LANG``, ``HOME``);
    - it reaches no network: the namespace has only a downed loopback;
    - it sees no file of yours: its root holds read-only binds of the system directories, the
      Python installation (with the virtual environment, so its packages import) and the loader's
      ``/etc`` files, plus a size-capped writable ``/tmp``. ``$HOME``, the repository and the rest
      are not there;
    - it runs unprivileged: as root, under a fresh random uid; otherwise in a nested user namespace
      without capabilities; with ``no_new_privs``;
    - limits hold: wall time (``timeout``: the namespace's init is killed and every process in it
      dies, detached or not), CPU time, address space (``memory_mb``), file size, open files,
      ``max_processes``, and output (``max_output_bytes`` of stdout and stderr; the run is killed past
      it, and only a 64 KiB tail of each is ever held). :meth:`evaluate` returns within ``timeout``
      plus a fraction of a second, whatever the program does.

    Not covered: the kernel itself (a kernel exploit escapes any namespace; use a VM for hostile
    workloads), CPU and memory *contention* with the host beyond the rlimits (no cgroup quota), and
    what the Python installation and system directories reveal by being readable.

    Where the namespaces are unavailable (macOS, Windows, a Docker container without
    ``--privileged``, unprivileged user namespaces disabled), ``"auto"`` falls back, with a one-time
    ``RuntimeWarning`` that says why, to a run that is **not isolated**: the same rlimits (except
    processes), a new session whose process group and leftover descendants are killed at the end,
    a private temporary working directory and a scrubbed environment -- but the program can read
    your files and other processes' ``/proc/<pid>/environ`` and use the network, so API keys in
    this process's environment are exposed to it. Run untrusted evaluations in a container or VM
    there. ``isolation="namespaces"`` raises instead of falling back; ``"none"`` skips the sandbox
    (no warning). In every mode an audit hook refuses sockets, subprocesses and ``os.fork``/``exec``
    (unisolated, ``ctypes`` too, which keeps numpy out there): it catches accidents and names them (``status="blocked"``), but is no boundary
    (``_posixsubprocess`` or ``gc`` get past it) -- the namespaces are.

    **What a pass means.** A harness compiles both parts, runs the program then the tests in one
    namespace, and only after the last test writes a token drawn fresh for this evaluation; the
    evaluator requires that exact token. The token reaches the harness on stdin, which is then
    replaced by ``/dev/null``, so it is in neither the program's environment nor any file, and
    ``sys.exit``, ``os._exit``, an exception, a crash or a kill before the end cannot produce it.
    The bar is accidental and lazy cheating: the program runs in the harness's own process, so code
    written to dig the token out of the harness's stack frame could still forge a pass, as could
    objects whose ``__eq__`` always says yes. Every text stored in the result passes through
    :func:`ember._runtime.redact`, and values of this process's ``*KEY*``/``*TOKEN*``/``*SECRET*``
    environment variables are masked too.

    >>> from ember.data import DatasetItem
    >>> item = DatasetItem("sq", "Write square(x).", "", metadata={"tests": "assert square(3) == 9"})
    >>> evaluator = CodeExecutionEvaluator(timeout=5.0, isolation="none")
    >>> evaluator("```python\\ndef square(x):\\n    return x * x\\n```", item).metadata["status"]
    'passed'
    >>> evaluator("def square(x):\\n    return x + x", item).metadata["status"]
    'failed'
    """

    name = "pass"

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        memory_mb: int = 512,
        tests_key: str = "tests",
        max_parallel: int | None = None,
        isolation: Literal["auto", "namespaces", "none"] = "auto",
        max_output_bytes: int = 16 * 2**20,
        max_processes: int = 64,
    ) -> None:
        if isolation not in ("auto", "namespaces", "none"):
            raise ValueError(f"isolation must be 'auto', 'namespaces' or 'none', not {isolation!r}")
        self.timeout, self.memory_mb, self.tests_key = timeout, memory_mb, tests_key
        self.isolation, self.max_output_bytes, self.max_processes = isolation, max_output_bytes, max_processes
        self._slots = threading.BoundedSemaphore(max_parallel or os.cpu_count() or 1)

    def evaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        tests = item.metadata.get(self.tests_key)
        if not tests:
            raise ValueError(f"item {item.id!r} has no metadata[{self.tests_key!r}] to run the code against")
        isolate = self._isolate()
        token = secrets.token_hex(16)
        blocked = _BLOCKED_EVENTS if isolate else (*_BLOCKED_EVENTS, "ctypes.")
        files = {"harness.py": _HARNESS.replace("@BLOCKED@", repr(blocked)), "solution.py": extract_code(output), "tests.py": str(tests)}
        limits = Limits(timeout=self.timeout, memory_mb=self.memory_mb, max_processes=self.max_processes,
                        max_output_bytes=self.max_output_bytes)  # fmt: skip
        with self._slots:
            outcome = run_python(files, ["harness.py"], limits=limits, stdin=f"{token}\n".encode(), isolate=isolate)
        passed = outcome.returncode == 0 and f"\n{_PASS_MARK}{token}\n".encode() in outcome.stdout
        return EvaluationResult.binary(passed, status=_status(outcome, passed), stderr=_scrub(outcome.stderr), isolated=outcome.isolated)

    async def aevaluate(self, output: str, item: DatasetItem) -> EvaluationResult:
        return await asyncio.to_thread(self.evaluate, output, item)

    def _isolate(self) -> bool:
        if self.isolation == "none":
            return False
        mode, reason = isolation()
        if mode is not None:
            return True
        if self.isolation == "namespaces":
            raise EmberError(f"CodeExecutionEvaluator(isolation='namespaces'): the sandbox is unavailable: {reason}")
        _warn_once(reason)
        return False


def _status(outcome: Outcome, passed: bool) -> str:
    err = outcome.stderr.decode(errors="replace")
    killed = {128 + signal.SIGKILL, 128 + signal.SIGXCPU, -signal.SIGKILL, -signal.SIGXCPU}
    if passed:
        return "passed"
    if outcome.setup_error is not None or (outcome.returncode == SETUP_FAILED and not err.strip()):
        return "sandbox error"
    if outcome.timed_out:
        return "timeout"
    if outcome.output_exceeded:
        return "output limit"
    if "MemoryError" in err or outcome.returncode in killed:
        return "resource limit"
    if _BLOCKED in err:
        return "blocked"
    if outcome.returncode == 0 or (outcome.returncode == _EXITED_EARLY and _EARLY in err):
        return "exited early"
    return "failed"


def _scrub(stderr: bytes) -> str:
    """The end of the program's stderr, fit to store: secrets of this process and key-shaped strings masked."""
    text = stderr.decode(errors="replace")
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAME.search(name):
            text = text.replace(value, "***")
    return redact(text)[-_STDERR_CHARS:]


def _warn_once(reason: str) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"CodeExecutionEvaluator: model-written code runs NOT isolated, because {reason}. It can read your files "
        "and other processes' environments (API keys included) and reach the network; only rlimits, a killed "
        "process group, a private working directory and a scrubbed environment apply. Run the evaluation in a "
        "container or VM, or pass isolation='none' to acknowledge this.",
        RuntimeWarning,
        stacklevel=4,
    )
