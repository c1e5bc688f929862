"""CodeExecutionEvaluator against hostile programs: secrets, network, processes, exits, output floods.

Each test runs as the user would: ``evaluator(output, item)`` on model "code" that misbehaves.
Where a property needs the Linux sandbox and this machine cannot make one, the test says so and
skips; the fallback (``isolation="none"``) is exercised on every machine.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import resource
import secrets
import socket
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings

import pytest

from ember._runtime import EmberError, register_secret
from ember.data import DatasetItem
from ember.eval import CodeExecutionEvaluator, _code, _sandbox

pytestmark = pytest.mark.filterwarnings("ignore:CodeExecutionEvaluator.*NOT isolated:RuntimeWarning")

MODE, REASON = _sandbox.isolation()
ISOLATED = MODE is not None
needs_isolation = pytest.mark.skipif(not ISOLATED, reason=f"the Linux sandbox is unavailable here: {REASON}")
BOTH = pytest.mark.parametrize("isolation", ["auto", "none"])

SQUARE = DatasetItem("sq", "Write square(x).", "", metadata={"tests": "assert square(3) == 9\nassert square(-2) == 4"})
CORRECT = "def square(x):\n    return x * x\n"
# Code written to get past the audit hook, as a determined program would.
UNGUARD = "import sys\nsys.modules['__main__']._guard.__defaults__ = ((),)\n"


def program(source: str) -> str:
    return "```python\n" + textwrap.dedent(source) + "\n```"


def alive_with(marker: str) -> list[int]:
    """Host pids whose command line carries ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                continue
    return found


def settle(marker: str, seconds: float = 1.0) -> list[int]:
    """Survivors after giving the kernel ``seconds`` to finish killing a torn-down tree."""
    end = time.monotonic() + seconds
    while (left := alive_with(marker)) and time.monotonic() < end:
        time.sleep(0.05)
    return left


# --- passing and failing ---------------------------------------------------------------------


@BOTH
def test_a_correct_solution_passes_and_a_wrong_one_fails_with_a_useful_redacted_message(isolation):
    evaluator = CodeExecutionEvaluator(timeout=5.0, memory_mb=256, isolation=isolation)
    passed = evaluator(program(CORRECT), SQUARE)
    assert passed.is_correct and passed.score == 1.0 and passed.metadata["status"] == "passed"
    assert passed.metadata["isolated"] is (ISOLATED and isolation == "auto")

    key = "sk-" + secrets.token_hex(16)
    wrong = evaluator(program(f"def square(x):\n    print({key!r}, file=__import__('sys').stderr)\n    return x + x"), SQUARE)
    assert not wrong.is_correct and wrong.metadata["status"] == "failed"
    assert "AssertionError" in wrong.metadata["stderr"] and "assert square(3) == 9" in wrong.metadata["stderr"]
    assert key not in repr(wrong) and "***" in wrong.metadata["stderr"]


def test_a_chatty_correct_solution_still_passes():
    chatty = program("import sys\nfor i in range(3000):\n    print('line', i, 'x' * 1000)\n    print('err', i, file=sys.stderr)\n" + CORRECT)
    assert CodeExecutionEvaluator(timeout=10.0)(chatty, SQUARE).metadata["status"] == "passed"


def test_aevaluate_runs_off_the_event_loop():
    result = asyncio.run(CodeExecutionEvaluator(timeout=5.0).aevaluate(program(CORRECT), SQUARE))
    assert result.is_correct


@BOTH
@pytest.mark.parametrize(
    "cheat",
    ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit", "import sys\nsys.exit()",
     "import atexit, sys\natexit.register(print, 'ember-tests-passed:0')\nsys.exit(0)",
     "import os\nos.write(1, b'\\nember-tests-passed:' + b'0' * 32 + b'\\n')\nos._exit(0)",
     "import builtins, os\nbuiltins.AssertionError = type('Nope', (Exception,), {})\nos._exit(0)"],
)  # fmt: skip
def test_exiting_before_the_tests_end_never_passes(cheat, isolation):
    result = CodeExecutionEvaluator(timeout=5.0, isolation=isolation)(program(CORRECT + cheat), SQUARE)
    assert not result.is_correct and result.score == 0.0
    assert result.metadata["status"] == "exited early"


# --- secrets ---------------------------------------------------------------------------------

HUNT = """\
import glob, os, sys
seen = []
for path in ["/proc/%d/environ" % os.getppid(), "/proc/{parent}/environ", "/proc/{holder}/environ", *glob.glob("/proc/*/environ")]:
    try:
        with open(path, "rb") as f:
            seen.append(path + ": " + f.read().replace(b"\\0", b" ").decode(errors="replace"))
    except OSError as exc:
        seen.append(path + ": " + repr(exc))
seen.append("environ: " + repr(dict(os.environ)))
text = "\\n".join(seen)
print(text)
print(text, file=sys.stderr)
print("PARENT-VISIBLE" if os.path.exists("/proc/{parent}/environ") else "PARENT-HIDDEN", file=sys.stderr)
print("SAW-THE-KEY" if "OPENAI_API_KEY=" in text else "NO-KEY", file=sys.stderr)
raise RuntimeError("hunted:" + text[-3000:])
"""


@BOTH
def test_a_planted_key_never_reaches_the_result(monkeypatch, isolation):
    key = "sk-planted-" + secrets.token_hex(20)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    register_secret(key)
    # A process that holds the key in its initial environment, as an evaluating process started
    # with the key exported would: /proc/<pid>/environ shows that, not later setenv calls.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "OPENAI_API_KEY": key})
    try:
        hunt = HUNT.format(parent=os.getpid(), holder=holder.pid)
        result = CodeExecutionEvaluator(timeout=5.0, isolation=isolation)(program(hunt), SQUARE)
    finally:
        holder.kill()
        holder.wait()
    assert not result.is_correct and result.metadata["status"] == "failed"
    assert key not in repr(result) and key[-16:] not in repr(result)
    if isolation == "auto" and ISOLATED:
        assert "PARENT-HIDDEN" in result.metadata["stderr"] and "NO-KEY" in result.metadata["stderr"]


PIPELINE = """\
import sys
from ember.data import DatasetItem
from ember.eval import CodeExecutionEvaluator, EvaluationPipeline

journal, hunt = sys.argv[1], open(sys.argv[2]).read()
item = DatasetItem("sq", "Write square(x).", "", metadata={"tests": "assert square(3) == 9"})
answer = lambda prompt: "```python\\n" + hunt + "\\n```"
results = EvaluationPipeline([item], [CodeExecutionEvaluator(timeout=5.0)], answer, journal=journal, progress=False).evaluate()
print([r.to_dict() for r in results.records])
"""


def test_an_evaluation_started_with_the_key_exported_keeps_it_out_of_results_and_journal(tmp_path):
    key = "planted" + secrets.token_hex(20)  # no provider's key shape: only real protection hides it
    script, hunt, journal = tmp_path / "run.py", tmp_path / "hunt.py", tmp_path / "run.sqlite"
    script.write_text(PIPELINE)
    hunt.write_text(HUNT.format(parent="self", holder="self"))
    env = {**os.environ, "OPENAI_API_KEY": key}
    run = subprocess.run([sys.executable, str(script), str(journal), str(hunt)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "hunted" in run.stdout  # the program did run, and its output was kept
    assert key not in run.stdout and key not in run.stderr
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("run.sqlite*"))
    assert stored and key.encode() not in stored


@needs_isolation
def test_isolated_code_cannot_read_or_write_the_users_files(tmp_path):
    secret = tmp_path / "notes.txt"
    secret.write_text("private")
    home = pwd.getpwuid(os.getuid()).pw_dir
    pythons = {p for path in (sys.prefix, sys.base_prefix) for p in (os.path.abspath(path), os.path.realpath(path))}
    on_the_way = {os.path.relpath(p, home).split(os.sep)[0] for p in pythons if p.startswith(home.rstrip("/") + "/")}
    probe = f"""
    import os, sys
    for path in [{str(secret)!r}, {os.getcwd()!r} + "/pyproject.toml", os.path.expanduser("~/.bashrc")]:
        print(path, "SEEN" if os.path.exists(path) else "hidden", file=sys.stderr)
    home = {home!r}  # the user's real home: at most the directories leading to the Python installation
    print(home, "SEEN" if os.path.isdir(home) and set(os.listdir(home)) - {on_the_way!r} else "hidden", file=sys.stderr)
    for path in ["/usr/ember-probe", {sys.prefix!r} + "/ember-probe"]:
        try:
            open(path, "w").close()
            print(path, "WRITABLE", file=sys.stderr)
        except OSError:
            print(path, "read-only", file=sys.stderr)
    import numpy  # the virtual environment's packages still import
    raise SystemExit(1)
    """
    result = CodeExecutionEvaluator(timeout=5.0)(program(probe), SQUARE)
    assert "SEEN" not in result.metadata["stderr"] and "WRITABLE" not in result.metadata["stderr"]
    assert "ModuleNotFoundError" not in result.metadata["stderr"], result.metadata["stderr"]
    assert result.metadata["status"] == "exited early"


# --- network ---------------------------------------------------------------------------------


@needs_isolation
def test_isolated_code_reaches_no_network():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        attempt = UNGUARD + f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED', file=__import__('sys').stderr)\n"
        result = CodeExecutionEvaluator(timeout=5.0)(program(attempt + CORRECT), SQUARE)
        with pytest.raises(TimeoutError):
            server.accept()
    assert not result.is_correct and "CONNECTED" not in result.metadata["stderr"]
    assert "unreachable" in result.metadata["stderr"] or "refused" in result.metadata["stderr"], result.metadata["stderr"]


def test_the_audit_hook_still_names_accidents():
    result = CodeExecutionEvaluator(timeout=5.0)(program("import urllib.request\nurllib.request.urlopen('http://example.com')\n" + CORRECT), SQUARE)
    assert result.metadata["status"] == "blocked"


# --- processes -------------------------------------------------------------------------------

SPAWNS = {
    "popen-new-session": """\
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", MARKER], start_new_session=True)
        """,
    "double-fork": """\
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(30)", MARKER])
            os._exit(0)
        """,
    "posixsubprocess-fork-exec": """\
        import _posixsubprocess, os, sys
        r, w = os.pipe()
        try:
            _posixsubprocess.fork_exec([sys.executable, "-c", "import time; time.sleep(30)", MARKER], [os.fsencode(sys.executable)],
                                       True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w, True, True, -1, None, None, None, -1, None, False)
        except TypeError:
            print("FORK-EXEC-SIGNATURE", file=sys.stderr)
            raise SystemExit(1)
        """,
}


@BOTH
@pytest.mark.parametrize("spawn", list(SPAWNS))
@pytest.mark.parametrize("then", ["passes", "hangs"])
def test_a_detached_grandchild_neither_outlives_nor_stalls_the_evaluation(spawn, then, isolation):
    marker = "ember-grandchild-" + secrets.token_hex(8)
    body = UNGUARD + f"MARKER = {marker!r}\n" + textwrap.dedent(SPAWNS[spawn]) + CORRECT + ("while True: pass\n" if then == "hangs" else "")
    timeout = 2.0
    start = time.monotonic()
    result = CodeExecutionEvaluator(timeout=timeout, isolation=isolation)(program(body), SQUARE)
    elapsed = time.monotonic() - start
    if "FORK-EXEC-SIGNATURE" in result.metadata["stderr"]:
        pytest.skip(f"_posixsubprocess.fork_exec has another signature on Python {sys.version_info[:2]}")
    assert elapsed < timeout + 1.5
    assert result.metadata["status"] == ("passed" if then == "passes" else "timeout"), result.metadata
    if then == "passes":
        assert elapsed < timeout, "a grandchild holding the pipes must not stall a finished run"
    assert settle(marker) == []


@needs_isolation
def test_a_fork_bomb_is_capped_and_killed_whole():
    marker = "ember-bomb-" + secrets.token_hex(8)
    bomb = "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass\\n"
    body = UNGUARD + f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', '{bomb}', {marker!r}])\n"
    start = time.monotonic()
    result = CodeExecutionEvaluator(timeout=2.0, max_processes=32)(program(body), SQUARE)
    assert time.monotonic() - start < 3.5
    assert result.metadata["status"] == "timeout" and not result.is_correct
    assert settle(marker, 2.0) == []


@needs_isolation
def test_the_process_limit_holds_in_the_sandbox():
    spawner = """
    import subprocess, sys
    children = []
    for _ in range(200):
        try:
            children.append(subprocess.Popen(["sleep", "30"]))
        except OSError:
            break
    print("SPAWNED", len(children), file=sys.stderr)
    raise SystemExit(1)
    """
    result = CodeExecutionEvaluator(timeout=5.0, max_processes=16)(program(UNGUARD + textwrap.dedent(spawner)), SQUARE)
    spawned = int(result.metadata["stderr"].split("SPAWNED", 1)[1].split()[0])
    assert 0 < spawned <= 16


# --- output ----------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_flood_of_output_is_cut_off_and_never_buffered(stream, isolation):
    flood = program(f"import sys\nfor _ in range(600):\n    print('x' * 10**6, file=sys.{stream})\n" + CORRECT)
    evaluator = CodeExecutionEvaluator(timeout=10.0, isolation=isolation)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        start = time.monotonic()
        result = evaluator(flood, SQUARE)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert result.metadata["status"] == "output limit" and not result.is_correct
    assert peak < 4 * 2**20 and growth_mib < 64
    assert len(repr(result)) < 4000 and elapsed < 5


# --- choosing isolation ----------------------------------------------------------------------


def test_without_namespaces_auto_warns_once_and_namespaces_refuses(monkeypatch):
    monkeypatch.setattr(_sandbox, "_probe", (None, "this test says the kernel refused"))
    monkeypatch.setattr(_code, "_warned", False)
    with pytest.warns(RuntimeWarning, match="NOT isolated, because this test says the kernel refused"):
        first = CodeExecutionEvaluator(timeout=5.0)(program(CORRECT), SQUARE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = CodeExecutionEvaluator(timeout=5.0)(program(CORRECT), SQUARE)
        CodeExecutionEvaluator(timeout=5.0, isolation="none")(program(CORRECT), SQUARE)
    assert first.is_correct and second.is_correct and first.metadata["isolated"] is False
    with pytest.raises(EmberError, match="unavailable: this test says the kernel refused"):
        CodeExecutionEvaluator(isolation="namespaces")(program(CORRECT), SQUARE)
    with pytest.raises(ValueError, match="isolation must be"):
        CodeExecutionEvaluator(isolation="container")  # type: ignore[arg-type]
