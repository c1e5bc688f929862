"""The ``ember`` command: eval (the main job), models and datasets."""

from __future__ import annotations

import json
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
