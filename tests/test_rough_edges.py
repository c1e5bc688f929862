"""Rough edges found against a real OpenAI-compatible server (llama.cpp serving SmolLM2), one test each.

1. ``max_tokens`` reaches a non-OpenAI host under the name it reads;
2. a keyless server needs no key, even with ``api_key_env`` configured;
3. ``ember models`` lists configured endpoints and what they serve (OpenAI-style and Anthropic),
   unreachable ones included;
4. ``ember eval`` shows each failing system's first error and count, and never a $0 for failed work;
5. ``ember eval`` pins the temperature (0 unless given) and records it in the journal and the report.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest

from ember.cli import main


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables fold cells at 80 columns; keep ids whole


def _sums(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "query": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(n)))
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


# -- 1. max_tokens ---------------------------------------------------------------------------------


def test_max_tokens_is_sent_as_max_tokens_to_a_non_openai_host(loopback_models):
    """``openai`` pointed at a compatible server (``OPENAI_BASE_URL``) sends ``max_tokens``, which
    llama.cpp and friends read; OpenAI's own host keeps ``max_completion_tokens``; never both."""
    from ember.models.providers._base import ProviderSettings
    from ember.models.providers.openai import OpenAIProvider

    loopback_models.service.invoke_model("openai:gpt-4o-mini", "What is 2 + 2?", max_tokens=5)
    body = loopback_models.server.requests[0].body
    assert body["max_tokens"] == 5 and "max_completion_tokens" not in body

    def field(base_url, **options):
        return OpenAIProvider(ProviderSettings(name="openai", kind="openai", base_url=base_url, options=options)).max_tokens_field

    assert field(None) == field("https://api.openai.com/v1") == "max_completion_tokens"
    assert field("http://127.0.0.1:8080/v1") == field("https://api.together.xyz/v1") == "max_tokens"
    assert field("http://127.0.0.1:8080/v1", max_tokens_field="max_completion_tokens") == "max_completion_tokens"


# -- 2. keyless servers ----------------------------------------------------------------------------


def test_openai_compatible_with_an_unset_api_key_env_sends_no_key_unless_required(loopback_models, monkeypatch):
    from ember.models import MissingCredentialsError

    monkeypatch.delenv("LOCAL_LLM_KEY", raising=False)
    url = loopback_models.server.openai_base_url
    loopback_models.config.update_config("model_registry", {"providers": {
        "llamacpp": {"kind": "openai_compatible", "base_url": url, "api_key_env": "LOCAL_LLM_KEY"},
        "guarded": {"kind": "openai_compatible", "base_url": url, "api_key_env": "LOCAL_LLM_KEY", "requires_key": True},
    }})  # fmt: skip
    assert loopback_models.service.invoke_model("llamacpp:smollm2", "What is 6 x 7?").text == "42"
    assert not loopback_models.server.requests[0].has_api_key
    with pytest.raises(MissingCredentialsError, match="LOCAL_LLM_KEY"):
        loopback_models.service.invoke_model("guarded:smollm2", "What is 6 x 7?")
    assert len(loopback_models.server.requests) == 1


# -- 3. ember models -------------------------------------------------------------------------------


def test_models_lists_configured_endpoints_served_models_and_unreachable_ones(loopback_models, capsys):
    loopback_models.config.update_config("model_registry", {"providers": {
        "llamacpp": {"kind": "openai_compatible", "base_url": loopback_models.server.openai_base_url},
        "gone": {"kind": "openai_compatible", "base_url": f"http://127.0.0.1:{_closed_port()}/v1"},
    }})  # fmt: skip
    assert main(["models", "--timeout", "1"]) == 0
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())
    assert "configured endpoints" in out and "llamacpp:loopback" in out and "openai:loopback" in out
    assert "unreachable" in out and "Traceback" not in captured.out + captured.err
    assert loopback_models.key not in captured.out + captured.err
    assert any(r.path == "/v1/models" and r.has_api_key for r in loopback_models.server.requests)  # openai's key, used not shown


def test_models_asks_anthropic_endpoints_their_models_with_their_own_headers(loopback_models, capsys):
    """An ``anthropic``-kind endpoint is asked ``GET /v1/models`` in Anthropic's wire format
    (``x-api-key``, ``anthropic-version``), not skipped; the key is used, never shown."""
    loopback_models.server.models = ("claude-loop-1", "claude-loop-2")
    loopback_models.config.update_config("model_registry", {"providers": {
        "proxy": {"kind": "anthropic", "base_url": loopback_models.server.anthropic_base_url,
                  "api_key_env": "ANTHROPIC_API_KEY"},
        "away": {"kind": "anthropic", "base_url": f"http://127.0.0.1:{_closed_port()}"},
    }})  # fmt: skip
    assert main(["models", "--timeout", "1"]) == 0
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())
    assert "proxy:claude-loop-1, proxy:claude-loop-2" in out and "anthropic:claude-loop-1" in out
    assert "unreachable" in out and "not asked" not in out
    assert loopback_models.key not in captured.out + captured.err
    listed = [r for r in loopback_models.server.requests if r.path == "/v1/models" and r.provider == "anthropic"]
    assert len(listed) == 2 and all(r.has_api_key and r.status == 200 for r in listed)  # "anthropic" and "proxy"


# -- 4. ember eval errors and the cost of failed work ----------------------------------------------


def test_eval_shows_the_first_error_and_count_and_failed_work_costs_unknown(loopback_models, tmp_path, capsys):
    from ember.testing import Fault

    loopback_models.server.faults = [Fault.context_length()]  # every call fails, at once, not retried
    argv = ["eval", "--dataset", str(_sums(tmp_path / "sums.jsonl")), "--system", "down=openai:gpt-4o-mini",
            "--evaluator", "numeric", "--no-progress", "--report", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "down: 3 item(s) failed of 3; first error: item q0" in out
    assert "context" in out.lower() and loopback_models.key not in out
    assert "$0.0000" not in out and "unknown" in out
    report = json.loads((tmp_path / "r.json").read_text())["systems"]["down"]
    assert report["cost_usd"] is None and report["cost_label"] == "unknown"


# -- 5. temperature --------------------------------------------------------------------------------


def test_eval_pins_temperature_and_records_it(loopback_models, tmp_path, capsys):
    data = _sums(tmp_path / "sums.jsonl")
    base = ["eval", "--dataset", str(data), "--system", "openai:gpt-4o-mini", "--evaluator", "numeric", "--no-progress"]
    journal, report = tmp_path / "run.sqlite", tmp_path / "r"
    assert main([*base, "--journal", str(journal), "--report", str(report)]) == 0
    assert [r.body["temperature"] for r in loopback_models.server.requests] == [0, 0, 0]
    with sqlite3.connect(journal) as conn:
        identity = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'run'").fetchone()[0])
    assert "('temperature', 0.0)" in identity["systems"]["openai:gpt-4o-mini"]
    settings = json.loads(report.with_suffix(".json").read_text())["settings"]
    assert settings["temperature"] == 0.0 and "temperature 0.0" in report.with_suffix(".html").read_text()

    assert main([*base, "--temperature", "0.7", "--report", str(tmp_path / "warm")]) == 0
    assert [r.body["temperature"] for r in loopback_models.server.requests[3:]] == [0.7] * 3

    # A journal written before the temperature was pinned (its systems sent none) is not resumed at 0:
    # the default journal name differs, and naming it explicitly is refused, saying what changed.
    with sqlite3.connect(journal) as conn:
        identity["systems"]["openai:gpt-4o-mini"] = "model:openai:gpt-4o-mini"
        conn.execute("UPDATE meta SET value = ? WHERE key = 'run'", (json.dumps(identity, sort_keys=True),))
    capsys.readouterr()
    assert main([*base, "--journal", str(journal)]) == 1
    err = capsys.readouterr().err
    assert "systems" in err and "temperature" in err and "--fresh" in err and len(loopback_models.server.requests) == 6
