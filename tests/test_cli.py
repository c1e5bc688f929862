"""The ``ember`` command: eval (the main job), models and datasets."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from ember.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


def test_datasets_and_models_list_the_registries(capsys):
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    for name in ("mmlu", "gsm8k", "truthfulqa", "commonsenseqa", "halueval", "gpqa", "aime", "minibench"):
        assert name in listing
    assert main(["datasets", "gpqa"]) == 0 and "github.com/idavidrein/gpqa" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert "openai:gpt-4o-mini" in capsys.readouterr().out


def test_eval_compares_systems_writes_reports_and_resumes(loopback_models, capsys):
    server = loopback_models.server
    argv = ["eval", "--dataset", "minibench", "--sample", "12", "--no-progress",
            "--system", "one=openai:gpt-4o-mini", "--system", "vote=3:E:openai:gpt-4o-mini:0.5,1:MC"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "one" in out and "vote" in out and "accuracy" in out
    assert len(server.requests) == 12 * 4
    report = json.loads(next(Path("reports").glob("minibench-*.json")).read_text())
    assert set(report["systems"]) == {"one", "vote"} and report["systems"]["vote"]["n_items"] == 12
    assert next(Path("reports").glob("minibench-*.html")).read_text().startswith("<!doctype html>")

    assert main(argv) == 0  # same command again: everything is journaled, nothing is called
    assert "resuming" in capsys.readouterr().out and len(server.requests) == 12 * 4
    assert main([*argv, "--fresh"]) == 0 and len(server.requests) == 2 * 12 * 4


def test_eval_on_a_file_with_field_mapping(loopback_models, tmp_path, capsys):
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"q": f"What is {i} + 2?", "a": i + 2}) + "\n" for i in range(5)))
    argv = ["eval", "--dataset", str(path), "--field", "query=q", "--field", "answer=a", "--evaluator", "numeric",
            "--system", "openai:gpt-4o-mini", "--no-progress", "--report", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["systems"]["openai:gpt-4o-mini"]["metrics"]["accuracy"] == 1.0


def test_budget_stops_and_says_so(loopback_models, capsys):
    argv = ["eval", "--dataset", "minibench", "--system", "openai:gpt-4o", "--budget", "0.0001",
            "--concurrency", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stopped early" in out and "cost budget" in out
    assert len(loopback_models.server.requests) < 99


@pytest.mark.parametrize(
    "argv, message",
    [(["--dataset", "mmluu"], "Did you mean: mmlu"),
     (["--dataset", "mmlu", "--data-dir", "/nonexistent"], "MISSING"),
     (["--dataset", "gsm8k", "--data-dir", str(FIXTURES / "mmlu")], "grade_school_math/data/test.jsonl")],
)  # fmt: skip
def test_eval_errors_are_one_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", *argv, "--system", "openai:gpt-4o"]) == 1
    assert message in capsys.readouterr().err


def test_unknown_evaluator_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="unknown --evaluator"):
        main(["eval", "--dataset", "minibench", "--system", "openai:gpt-4o", "--evaluator", "bleu"])


# -- arguments that must fail before any model call, with one clear message ---------------------------
def _sums_file(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "query": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(n)))
    return path


@pytest.mark.parametrize(
    "extra, message",
    [(["--sample", "0"], "N must be >= 1, got 0"),
     (["--sample", "-3"], "N must be >= 1, got -3"),
     (["--concurrency", "0"], "--concurrency must be >= 1"),
     (["--budget", "-1"], "--budget must be >= 0"),
     (["--budget", "nan"], "--budget must be >= 0"),
     (["--temperature", "nan"], "--temperature must be from 0 to 2"),
     (["--max-tokens", "0"], "--max-tokens must be >= 1"),
     (["--field", "query"], "expected ITEM=COLUMN"),
     (["--field", "question=q"], "unknown item field 'question'"),
     (["--prompt", "{query.upper}"], "{query.upper} is not a plain {name} placeholder"),
     (["--prompt", "{query[0]}"], "{query[0]} is not a plain {name} placeholder"),
     (["--prompt", "Q: {query"], "expected '}' before end of string"),
     (["--prompt", "Q: query}"], "Single '}' encountered"),
     (["--system", "a=openai:gpt-4o"], "system name 'a' given twice"),
     (["--system", "=openai:gpt-4o"], "non-empty name and spec")],
)  # fmt: skip
def test_bad_arguments_are_usage_errors_before_any_call(extra, message, loopback_models, tmp_path, capsys):
    data = _sums_file(tmp_path / "sums.jsonl")
    argv = ["eval", "--dataset", str(data), "--system", " a = openai:gpt-4o-mini", "--no-progress", *extra]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err, err
    assert err.startswith("usage: ember eval") and len(loopback_models.server.requests) == 0


def test_dataset_dependent_errors_exit_1_before_any_call(loopback_models, tmp_path, capsys):
    data, empty = _sums_file(tmp_path / "sums.jsonl"), tmp_path / "empty.jsonl"
    empty.write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    base = ["eval", "--system", "openai:gpt-4o-mini", "--no-progress"]
    cases = [
        (["--dataset", str(data), "--prompt", "{topic}: {query}"], "prompt template names {topic}, which item 'q0' does not have"),
        (["--dataset", str(empty)], "has no items to evaluate"),
        (["--dataset", str(data), "--journal", str(blocker / "run.sqlite")], "cannot create the journal's folder"),
        (["--dataset", str(data), "--report", str(blocker / "report")], "cannot write report"),
        (["--dataset", str(data), "--system", "bad=1:X:openai:gpt-4o:0.5"], "unknown TYPE 'X'"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert err.startswith("ember eval: ") and message in err and "Traceback" not in err, err
    assert len(loopback_models.server.requests) == 0
    assert not list(tmp_path.glob("ember_runs/*")) and not list(tmp_path.glob("reports/*"))


def test_unknown_notation_type_points_at_it(loopback_models, tmp_path, capsys):
    data = _sums_file(tmp_path / "sums.jsonl")
    assert main(["eval", "--dataset", str(data), "--system", "1:X:openai:gpt-4o:0.5", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "unknown TYPE 'X'" in err and "Unknown provider" not in err
    assert "    1:X:openai:gpt-4o:0.5\n      ^" in err


def test_one_unsendable_item_does_not_sink_the_run(loopback_models, tmp_path, capsys):
    rows = [{"id": "a", "query": "What is 1 + 1?", "answer": "2"}, {"id": "b", "query": "What is \ud800 + 1?", "answer": "3"},
            {"id": "c", "query": "What is 3 + 1?", "answer": "4"}]  # fmt: skip
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))  # valid JSON: "\ud800" is escaped
    journal = tmp_path / "run.sqlite"
    argv = ["eval", "--dataset", str(data), "--system", "openai:gpt-4o-mini", "--evaluator", "numeric", "--no-progress",
            "--journal", str(journal), "--report", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    assert "1 item(s) failed" in capsys.readouterr().out
    with sqlite3.connect(journal) as conn:
        rows = dict(conn.execute("SELECT item_id, error FROM records").fetchall())
    assert set(rows) == {"a", "b", "c"} and rows["a"] is None and rows["c"] is None and rows["b"]
    assert len(loopback_models.server.requests) == 2


def test_a_changed_dataset_gets_its_own_journal_or_a_clear_refusal(loopback_models, tmp_path, capsys):
    data = _sums_file(tmp_path / "test.jsonl", 4)
    base = ["eval", "--dataset", str(data), "--system", "openai:gpt-4o-mini", "--evaluator", "numeric", "--no-progress"]
    assert main(base) == 0 and len(loopback_models.server.requests) == 4
    data.write_text(data.read_text().replace('"answer": "1"', '"answer": "0"'))  # one answer corrected: same name, same count
    assert main(base) == 0  # the default journal is named after the content: a new run, not a resume
    out = capsys.readouterr().out
    assert "resuming" not in out and len(loopback_models.server.requests) == 8 and len(list(Path("ember_runs").glob("*.sqlite"))) == 2

    journal = tmp_path / "mine.sqlite"
    assert main([*base, "--journal", str(journal)]) == 0
    data.write_text(data.read_text().replace('"answer": "0"', '"answer": "1"'))
    assert main([*base, "--journal", str(journal)]) == 1
    err = capsys.readouterr().err
    assert "dataset content" in err and "--fresh" in err and len(loopback_models.server.requests) == 12
    assert main([*base, "--journal", str(journal), "--fresh"]) == 0 and len(loopback_models.server.requests) == 16


def test_a_damaged_journal_is_one_clear_message_and_fresh_replaces_it(loopback_models, tmp_path, capsys):
    data, journal = _sums_file(tmp_path / "sums.jsonl"), tmp_path / "run.sqlite"
    journal.write_bytes(b"\x00garbage, not SQLite" * 100)
    argv = ["eval", "--dataset", str(data), "--system", "openai:gpt-4o-mini", "--no-progress", "--journal", str(journal)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ember eval: journal ") and str(journal) in err and "--fresh" in err and "Traceback" not in err
    assert main([*argv, "--fresh"]) == 0 and len(loopback_models.server.requests) == 3


def test_budget_message_states_the_final_spend(loopback_models, tmp_path, capsys):
    loopback_models.server.latency = 0.05  # several items in flight when the budget is reached
    journal = tmp_path / "run.sqlite"
    argv = ["eval", "--dataset", "minibench", "--system", "openai:gpt-4o", "--budget", "0.0001",
            "--concurrency", "8", "--no-progress", "--journal", str(journal)]  # fmt: skip
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    said = float(re.search(r"spent \$([0-9.]+)", out).group(1))
    with sqlite3.connect(journal) as conn:
        total = conn.execute("SELECT SUM(cost_usd) FROM records").fetchone()[0]
    assert said == pytest.approx(total, abs=5e-5) and said > 0.0001
