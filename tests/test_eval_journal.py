"""The results journal from the user's side: what a run's identity covers, one run at a time,
damaged files, and one bad item that must not sink the others."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ember.data import DataLoader, DatasetItem
from ember.eval import (
    EvaluationPipeline,
    ExactMatchEvaluator,
    Journal,
    JournalCorruptError,
    JournalInUseError,
    JournalMismatchError,
    ModelSystem,
    NumericEvaluator,
)

MODEL = "openai:gpt-4o-mini"


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _sums(n: int, offset: int = 1) -> list[dict]:
    return [{"id": f"q{i}", "query": f"What is {i} + 1?", "answer": str(i + offset)} for i in range(n)]


def _pipeline(data, journal, model=MODEL, **options):
    return EvaluationPipeline(data, [NumericEvaluator()], model, journal=journal, progress=False, **options)


# -- identity: the dataset's content, not its name and size --------------------------------------
def test_corrected_answers_in_the_same_file_are_not_resumed(loopback_models, tmp_path):
    data, journal = _write_jsonl(tmp_path / "test.jsonl", _sums(5, offset=2)), tmp_path / "run.sqlite"  # all wrong
    first = _pipeline(DataLoader(data), journal).evaluate()
    assert first.accuracy == 0.0 and len(loopback_models.server.requests) == 5

    _write_jsonl(data, _sums(5))  # the answers are corrected: same file, same item count
    with pytest.raises(JournalMismatchError) as info:
        _pipeline(DataLoader(data), journal).evaluate()
    message = str(info.value)
    assert "dataset content" in message and "--fresh" in message and "new journal path" in message
    assert len(loopback_models.server.requests) == 5  # no call was made, no old score reported

    fresh = _pipeline(DataLoader(data), Journal(journal, fresh=True)).evaluate()
    assert fresh.accuracy == 1.0 and len(loopback_models.server.requests) == 10


def test_another_file_with_the_same_name_and_count_is_not_resumed(loopback_models, tmp_path):
    journal = tmp_path / "run.sqlite"
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    one = _write_jsonl(tmp_path / "a" / "test.jsonl", _sums(4))
    other = _write_jsonl(tmp_path / "b" / "test.jsonl", [{**row, "query": row["query"].replace("+ 1", "+ 2")} for row in _sums(4)])
    _pipeline(DataLoader(one), journal).evaluate()
    with pytest.raises(JournalMismatchError, match="dataset content"):
        _pipeline(DataLoader(other), journal).evaluate()
    resumed = _pipeline(DataLoader(one), journal).evaluate()  # the same content still resumes
    assert resumed.n_items == 4 and len(loopback_models.server.requests) == 4


def test_a_mismatch_names_what_changed(tmp_path):
    items = [DatasetItem(str(i), f"What is {i} plus 1?", str(i + 1)) for i in range(6)]
    journal = tmp_path / "run.sqlite"
    EvaluationPipeline(items, [NumericEvaluator()], lambda p: "1", name="s", journal=journal, progress=False).evaluate()
    with pytest.raises(JournalMismatchError, match=r"changed: systems \(s: function:"):
        EvaluationPipeline(items, [NumericEvaluator()], str.upper, name="s", journal=journal, progress=False).evaluate()
    with pytest.raises(JournalMismatchError, match=r"changed: prompt \(null -> Q: \{query\}\)"):
        EvaluationPipeline(items, [NumericEvaluator()], lambda p: "1", name="s", journal=journal, prompt="Q: {query}",
                           progress=False).evaluate()  # fmt: skip
    with pytest.raises(JournalMismatchError, match=r"changed: evaluators"):
        EvaluationPipeline(items, [ExactMatchEvaluator()], lambda p: "1", name="s", journal=journal, progress=False).evaluate()


def test_a_journal_without_a_fingerprint_is_refused_clearly(tmp_path):
    path = tmp_path / "old.sqlite"
    Journal(path).close()
    old_identity = {"dataset": "Dataset('items', size=3)", "systems": {"s": "function:x"}, "evaluators": [], "prompt": None}
    with sqlite3.connect(path) as conn:  # what an earlier Ember wrote: no format, no content fingerprint
        conn.execute("INSERT INTO meta VALUES ('run', ?)", (json.dumps(old_identity),))
    items = [DatasetItem(str(i), "q", "a") for i in range(3)]
    with pytest.raises(JournalMismatchError, match=r"did not fingerprint the dataset's content.*--fresh"):
        EvaluationPipeline(items, [ExactMatchEvaluator()], lambda p: "a", journal=path, progress=False).evaluate()


# -- damaged journals ------------------------------------------------------------------------------
def test_a_damaged_journal_is_a_typed_error_naming_the_file_and_the_fix(tmp_path):
    path = tmp_path / "run.sqlite"
    path.write_bytes(b"these bytes are not a SQLite database, " * 200)
    items = [DatasetItem("1", "q", "a")]
    with pytest.raises(JournalCorruptError) as info:
        EvaluationPipeline(items, [ExactMatchEvaluator()], lambda p: "a", journal=path, progress=False).evaluate()
    assert str(path) in str(info.value) and "--fresh" in str(info.value) and "delete the file" in str(info.value)
    results = EvaluationPipeline(items, [ExactMatchEvaluator()], lambda p: "a", journal=Journal(path, fresh=True),
                                 progress=False).evaluate()  # fmt: skip
    assert results.accuracy == 1.0

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:  # some other program's database
        conn.execute("CREATE TABLE records (x)")
    with pytest.raises(JournalCorruptError, match="not an Ember results journal"):
        Journal(other)


# -- one run at a time -------------------------------------------------------------------------------
def test_a_journal_in_use_is_refused_with_the_owners_pid(tmp_path):
    path = tmp_path / "run.sqlite"
    first, second = Journal(path), Journal(path)
    first.begin({"format": 2, "run": 1})
    with pytest.raises(JournalInUseError, match=rf"journal {path} is in use by pid {os.getpid()}"):
        second.begin({"format": 2, "run": 1})
    assert Path(f"{path}.lock").read_text().strip() == str(os.getpid())
    items = [DatasetItem("1", "q", "a")]
    with pytest.raises(JournalInUseError, match="in use by another run in this process"):  # the same Journal object, shared
        EvaluationPipeline(items, [ExactMatchEvaluator()], lambda p: "a", journal=first, progress=False).evaluate()
    first.release()
    assert second.begin({"format": 2, "run": 1}) is False  # free again: resumes the same (empty) run
    second.close()


_CLI = [sys.executable, "-m", "ember.cli", "eval", "--system", MODEL, "--evaluator", "numeric", "--concurrency", "2",
        "--no-progress"]  # fmt: skip


def test_two_processes_on_one_journal_call_each_item_at_most_once(loopback_models, tmp_path):
    server = loopback_models.server
    server.latency = 0.25  # 24 items, 2 at a time: the first run lasts about 3 s
    data, journal = _write_jsonl(tmp_path / "sums.jsonl", _sums(24)), tmp_path / "shared.sqlite"
    env = {**os.environ, **server.environ(loopback_models.key)}
    argv = [*_CLI, "--dataset", str(data), "--journal", str(journal)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    # Started at the same instant: their begin() races.
    children = [subprocess.Popen([*argv, "--report", str(tmp_path / f"r{k}")], env=env, cwd=tmp_path, **pipes) for k in range(2)]
    outcomes = [(child.wait(120), child.stderr.read()) for child in children]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 1], outcomes
    refused = next(err for code, err in outcomes if code == 1)
    assert "is in use by pid" in refused and "Traceback" not in refused and "IntegrityError" not in refused
    asked = Counter(r.body["messages"][-1]["content"] for r in server.requests)
    assert len(asked) == 24 and max(asked.values()) == 1  # every item was requested once in total

    # Finished: a second process now resumes it, and calls nothing.
    done = subprocess.run([*argv, "--report", str(tmp_path / "r3")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "resuming" in done.stdout and len(server.requests) == 24


# -- one bad item -------------------------------------------------------------------------------------
def test_an_item_the_sdk_cannot_send_is_that_items_error(loopback_models, tmp_path):
    items = [DatasetItem("a", "What is 1 + 1?", "2"), DatasetItem("b", "What is \ud800 + 1?", "3"),
             DatasetItem("c", "What is 3 + 1?", "4")]  # fmt: skip
    results = _pipeline(items, tmp_path / "run.sqlite").evaluate()
    assert results.n_items == 3 and results.n_errors == 1
    by_id = {r.item_id: r for r in results.records}
    assert by_id["a"].ok and by_id["c"].ok and by_id["a"].output == "2"
    assert not by_id["b"].ok and by_id["b"].error and by_id["b"].output is None
    assert Journal(tmp_path / "run.sqlite").finished(MODEL) == {"a", "c"} and len(loopback_models.server.requests) == 2


def test_a_setting_every_call_rejects_fails_each_item_not_the_run(loopback_models, tmp_path):
    items = [DatasetItem(str(i), f"What is {i} + 1?", str(i + 1)) for i in range(3)]
    system = ModelSystem(MODEL, temperature=float("nan"), name="nan")
    results = _pipeline(items, tmp_path / "run.sqlite", model=system).evaluate()
    assert results.n_items == 3 and results.n_errors == 3 and all(r.error for r in results.records)
    assert len(loopback_models.server.requests) == 0


def test_item_errors_are_redacted(tmp_path):
    key = "sk-proj-" + "A1b2C3d4" * 6

    def leaky(prompt: str) -> str:
        raise RuntimeError(f"upstream said: bad key {key}")

    results = EvaluationPipeline([DatasetItem("1", "q", "a")], [ExactMatchEvaluator()], leaky, journal=tmp_path / "j.sqlite",
                                 progress=False).evaluate()  # fmt: skip
    error = results.records[0].error
    assert error.startswith("RuntimeError: upstream said") and key not in error
    assert key not in (tmp_path / "j.sqlite").read_bytes().decode(errors="replace")


def test_cancelling_the_run_still_stops_it_and_frees_the_journal(tmp_path):
    """Cancellation is not an item's error: the run stops, finished items stay journaled, the lock is given back."""
    calls: list[str] = []

    async def system(prompt: str) -> str:
        calls.append(prompt)
        await asyncio.sleep(0.01)
        return "a"

    items = [DatasetItem(str(i), "q", "a") for i in range(50)]
    path = tmp_path / "j.sqlite"

    async def cancel_after_three() -> None:
        pipeline = EvaluationPipeline(items, [ExactMatchEvaluator()], system, concurrency=1, journal=path, progress=False)
        task = asyncio.ensure_future(pipeline.aevaluate())
        while len(calls) < 4:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_after_three())
    finished = Journal(path).finished("system")
    assert 3 <= len(finished) < 50 and len(calls) < 50
    rest = EvaluationPipeline(items, [ExactMatchEvaluator()], system, journal=path, progress=False).evaluate()
    assert rest.n_items == 50 and rest.n_errors == 0


def test_a_system_raising_cancelled_on_its_own_fails_only_that_item():
    from ember._runtime import Cancelled

    def system(prompt: str) -> str:
        if prompt == "q3":
            raise Cancelled("a call inside was cancelled by the system itself")
        return "a"

    items = [DatasetItem(str(i), f"q{i}", "a") for i in range(6)]
    results = EvaluationPipeline(items, [ExactMatchEvaluator()], system, progress=False).evaluate()
    assert results.n_items == 6 and results.n_errors == 1 and "Cancelled" in results.records[3].error


def test_items_that_finish_together_share_one_commit_and_every_one_is_journaled(tmp_path, monkeypatch):
    """Group commit: 40 items released at once are written in far fewer transactions than items."""
    commits: list[int] = []
    write = Journal.write

    def counting(journal, *records):
        commits.append(len(records))
        return write(journal, *records)

    monkeypatch.setattr(Journal, "write", counting)
    release = asyncio.Event()
    arrived = 0

    async def system(prompt: str) -> str:
        nonlocal arrived
        arrived += 1
        if arrived == 40:
            release.set()
        await release.wait()
        return "a"

    items = [DatasetItem(str(i), f"q{i}", "a") for i in range(40)]
    path = tmp_path / "j.sqlite"
    results = EvaluationPipeline(items, [ExactMatchEvaluator()], system, concurrency=40, journal=path, progress=False).evaluate()
    assert (results.n_items, results.n_errors) == (40, 0)
    assert sum(commits) == 40 and len(commits) < 40
    assert Journal(path).finished("system") == {str(i) for i in range(40)}
    commits.clear()  # resumed: every item is committed already, so nothing is written again
    again = EvaluationPipeline(items, [ExactMatchEvaluator()], system, concurrency=40, journal=path, progress=False).evaluate()
    assert again.n_items == 40 and commits == []
