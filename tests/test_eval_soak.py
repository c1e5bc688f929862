"""Soak: 2,000 items through an ensemble + judge network under injected faults, killed twice with
SIGKILL and resumed. Nothing may be lost, nothing counted twice, and the only calls paid twice are
those of the items in flight at each kill.

The loopback server lives in this process (it records every request); ``ember eval`` runs in a
child process that gets the server's environment and fast retry settings. On 2 cores the test
takes about 30 s (three child processes, each importing Ember; about 9,800 requests). The
client's timeout is generous (3 s) so that only the injected "slow" answers time out, even on a
loaded machine: a real answer that timed out would be paid twice and blur the accounting.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ember.testing import Fault, LoopbackServer

N = 2000  #: items
CONCURRENCY = 32  #: items in flight in the child (its worker count)
CALLS = 4  #: per item: 3 ensemble samples + 1 judge (whose JSON always parses: no repair call)
KILLS = 2
TIMEOUT = 3.0  #: the client's timeout; "slow" answers come far later, so they time out
NETWORK = "3:E:openai:gpt-4o-mini:0.7,1:J:openai:gpt-4o-mini:0"
_QUERY = re.compile(r"What is (\d+) \+ 1\?")
_JUDGE = '{"reasoning": "the candidates agree", "final_answer": "%s"}'


def _responder(request) -> str:
    """Arithmetic for the samples; well-formed JudgeSynthesis JSON for the judge."""
    text = request.last_user_message
    found = _QUERY.search(text)
    answer = str(int(found.group(1)) + 1) if found else "0"
    return _JUDGE % answer if "You are a judge" in text else answer


def _rows(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


STALL = 30  #: seconds without a new journal row: the child is stuck (32 items in flight never all wait that long)


def _watch(child: subprocess.Popen, journal: Path, log: Path, *, until: int | None, context: str) -> None:
    """Wait until the child exits or the journal holds ``until`` rows; a child that stops making
    progress is a hang: dump its threads (faulthandler, on SIGABRT) and fail with them."""
    last, since = _rows(journal), time.monotonic()
    while child.poll() is None and (until is None or last < until):
        time.sleep(0.01)
        rows = _rows(journal)
        if rows != last:
            last, since = rows, time.monotonic()
        elif time.monotonic() - since > STALL:
            os.kill(child.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack to stderr
            child.wait(30)
            stacks = "\n".join(line for line in log.read_text().splitlines() if "site-packages" not in line)
            pytest.fail(f"{context}: no item finished for {STALL} s at {rows} rows; the child's threads:\n{stacks[-12000:]}")


@pytest.mark.slow
def test_soak_faults_and_two_kill_9s_lose_nothing_and_count_nothing_twice(tmp_path):
    seed = int(os.environ.get("EMBER_SOAK_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    data, journal = tmp_path / "sums.jsonl", tmp_path / "soak.sqlite"
    data.write_text("".join(json.dumps({"id": f"i{i}", "query": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(N)))
    faults = [
        Fault.rate_limit(retry_after=0.0, rate=0.10),  # 429, retried at once
        Fault.server_error(500, rate=0.05),
        Fault.slow(delay=60.0, rate=0.02),  # past the client's timeout: a timeout, then a retry
        Fault.drop(rate=0.01),  # the connection closes with no answer
    ]
    argv = [sys.executable, "-m", "ember.cli", "eval", "--dataset", str(data), "--system", f"net={NETWORK}",
            "--evaluator", "numeric", "--concurrency", str(CONCURRENCY), "--no-progress", "--journal", str(journal),
            "--report", str(tmp_path / "report")]  # fmt: skip
    with LoopbackServer(responder=_responder, faults=faults, seed=seed) as server:
        env = {
            **os.environ,
            **server.environ("sk-soak-test-key"),
            "EMBER_MODEL_REGISTRY__BACKOFF_BASE": "0.01",
            "EMBER_MODEL_REGISTRY__BACKOFF_MAX": "0.2",
            "EMBER_MODEL_REGISTRY__MAX_RETRIES": "12",  # a 13th failure in a row: p ~ 0.18**13, never
            "EMBER_MODEL_REGISTRY__DEFAULT_TIMEOUT": str(TIMEOUT),
            "PYTHONFAULTHANDLER": "1",  # a hung child is dumped, not just timed out
        }
        started, kills = time.monotonic(), []
        for k in range(KILLS):  # run, then SIGKILL at a random moment once the child has made some progress
            target = _rows(journal) + rng.randint(N // 10, N // 3)
            log = tmp_path / f"child{k}.log"
            with log.open("w") as err:
                child = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
            _watch(child, journal, log, until=target, context=f"seed {seed}, run {k + 1}")
            time.sleep(rng.uniform(0, 0.3))  # anywhere: mid-call, mid-commit, between items
            assert child.poll() is None, f"seed {seed}: the child ended before it could be killed: {log.read_text()[-2000:]}"
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(30) == -signal.SIGKILL
            kills.append(_rows(journal))
        log = tmp_path / "final.log"
        with log.open("w") as err:
            child = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True)
        _watch(child, journal, log, until=None, context=f"seed {seed}, resumed run")
        stdout, _ = child.communicate(timeout=60)
        elapsed = time.monotonic() - started
        requests = server.requests

    assert child.returncode == 0, f"seed {seed}: {log.read_text()[-3000:]}"
    assert "resuming" in stdout  # the SIGKILLed owner's lock died with it
    # 0 lost, 0 counted twice: one row per item, each finished and right.
    with sqlite3.connect(journal) as conn:
        rows, distinct, ok, correct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT item_id), SUM(error IS NULL), SUM(json_extract(correct, '$.numeric_match'))"
            " FROM records"
        ).fetchone()
        systems = conn.execute("SELECT DISTINCT system FROM records").fetchall()
    assert systems == [("net",)]
    assert (rows, distinct, ok, correct) == (N, N, N, N), f"seed {seed}"
    report = json.loads((tmp_path / "report.json").read_text())["systems"]["net"]
    assert report["n_items"] == N and report["n_errors"] == 0 and report["metrics"]["accuracy"] == 1.0

    # The faults happened (at about 10% / 5% / 2% / 1% of ~9,700 requests).
    fired = Counter(r.fault for r in requests if r.fault)
    assert fired["rate_limit"] > 400 and fired["server_error"] > 200 and fired["slow"] > 60 and fired["drop"] > 25, fired

    # Calls paid twice: only the items in flight at a kill. An item is committed (one SQLite
    # transaction) right after its last answer; SIGKILL loses at most the CONCURRENCY items then in
    # flight, each of which had received at most CALLS answers; a resumed run calls finished items
    # never and lost items once more. So successful answers (status 200, received by the client)
    # exceed N * CALLS by at most CONCURRENCY * CALLS * KILLS, and per item: an item is asked
    # exactly CALLS times unless it was in flight at a kill (at most CONCURRENCY items per kill).
    answered = [r for r in requests if r.status == 200 and not r.client_closed]
    minimum, allowance = N * CALLS, CONCURRENCY * CALLS * KILLS
    per_item = Counter(int(_QUERY.search(r.body["messages"][-1]["content"]).group(1)) for r in answered)
    repeated = {item: n for item, n in per_item.items() if n != CALLS}
    summary = (
        f"seed {seed}: {len(requests)} requests, {len(answered)} answered (minimum {minimum}, allowance {allowance}), "
        f"{len(repeated)} item(s) re-asked, journal rows at the kills {kills}, faults {dict(fired)}, {elapsed:.0f} s"
    )
    print(summary)
    assert len(per_item) == N and all(n >= CALLS for n in per_item.values()), summary
    assert minimum <= len(answered) <= minimum + allowance, summary
    assert len(repeated) <= CONCURRENCY * KILLS and all(n <= CALLS * (1 + KILLS) for n in repeated.values()), summary
