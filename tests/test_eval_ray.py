"""Evaluation on a local Ray instance: cluster-wide limits, exactly-once, SIGKILL, secrets, resume.

One Ray instance (2 CPUs, so 2 task workers) is shared by the module. The loopback server is
started and its environment (the planted key included) set *before* Ray starts, so the
workers inherit it, as they would on a cluster whose nodes hold the keys.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ember.eval import EvaluationPipeline, NumericEvaluator

pytestmark = pytest.mark.slow
KEY = "sk-ray-planted-key-9f8e7d6c5b4a"
MODEL = "openai:gpt-4o-mini"
LIMIT = 4


def _items(n):
    from ember.data import DatasetItem

    return [DatasetItem(f"i{i}", f"What is {i} + 1?", str(i + 1)) for i in range(n)]


def _responder(request) -> str:
    import re

    numbers = re.findall(r"What is (\d+) \+ 1\?", request.last_user_message)
    return str(int(numbers[0]) + 1) if numbers else "0"


def _asked(request) -> str:
    return request.body["messages"][-1]["content"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ember._context import reset_app_context
    from ember._runtime import connect_ray
    from ember.config import create_config_manager, set_config_manager
    from ember.testing import LoopbackServer

    saved = dict(os.environ)
    with LoopbackServer(responder=_responder) as server:
        os.environ.update(server.environ(KEY))
        os.environ["EMBER_RAY_LEASE_TTL"] = "1.5"
        manager = create_config_manager()
        manager.update_config("model_registry", {"backoff_base": 0.02, "backoff_max": 0.5,
                                                 "providers": {"openai": {"max_concurrency": LIMIT}}})  # fmt: skip
        set_config_manager(manager)
        reset_app_context()
        ray = connect_ray(num_cpus=2)
        try:
            yield server, ray
        finally:
            session = Path(ray._private.worker._global_node.get_session_dir_path())
            ray.shutdown()
            set_config_manager(None)
            reset_app_context()
            os.environ.clear()
            os.environ.update(saved)
            server.session = session


def _outcome(r):
    """What a record says about the item (not its timing)."""
    return r.item_id, r.position, r.output, r.scores, r.correct, r.cost_usd, r.input_tokens, r.output_tokens, r.calls


def _run(backend, items, journal=None):
    return EvaluationPipeline(items, [NumericEvaluator()], MODEL, backend=backend, journal=journal, progress=False,
                              concurrency=16).evaluate()  # fmt: skip


def test_ray_run_keeps_the_per_model_limit_and_equals_a_local_run(cluster, tmp_path):
    from ember.models._cluster_limits import limits_actor

    server, ray = cluster
    items = _items(300)
    server.latency = 0.0
    local = _run("local", items)
    server.reset()
    server.latency = 0.02
    grants = ray.get(limits_actor(ray).grants.remote())
    remote = _run("ray", items, tmp_path / "ray.sqlite")
    grants = ray.get(limits_actor(ray).grants.remote()) - grants
    asked = Counter(_asked(r) for r in server.requests)
    assert len(asked) == 300 and set(asked.values()) == {1}  # every item requested exactly once
    assert server.stats.max_in_flight <= LIMIT  # one budget across both workers
    # 16 items in flight per worker for 4 slots: leases pass between a worker's calls, so the
    # actor grants fewer than the 2 per call (model and provider) it would without handoffs.
    assert grants < 2 * 300
    assert remote.n_items == 300 and remote.n_errors == 0 and remote.accuracy == 1.0
    assert [_outcome(r) for r in remote.records] == [_outcome(r) for r in local.records]
    from ember.eval._ray_backend import worker_pids

    assert len(worker_pids()) == 2


def test_resume_on_ray_skips_what_the_journal_holds(cluster, tmp_path):
    server, _ = cluster
    items, journal = _items(120), tmp_path / "resume.sqlite"
    _run("ray", items, journal)
    with sqlite3.connect(journal) as db:
        db.execute("DELETE FROM records WHERE CAST(substr(item_id, 2) AS INTEGER) % 4 = 0")
    server.reset()
    again = _run("ray", items, journal)
    assert sorted(_asked(r) for r in server.requests) == sorted(f"What is {i} + 1?" for i in range(0, 120, 4))
    assert again.n_items == 120 and again.accuracy == 1.0


def test_a_worker_killed_mid_run_loses_nothing_and_counts_nothing_twice(cluster, tmp_path):
    from ember.eval._ray_backend import worker_pids

    server, _ = cluster
    server.reset()
    server.latency = 0.05
    items, out = _items(300), {}
    thread = threading.Thread(target=lambda: out.update(results=_run("ray", items, tmp_path / "kill.sqlite")))
    thread.start()
    deadline = time.monotonic() + 60
    while len(server.requests) < 80 and time.monotonic() < deadline:
        time.sleep(0.02)
    before = worker_pids()
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = len(server.requests)
    thread.join(120)
    print(f"killed {victim} of {before} after {killed_at} requests; workers now {worker_pids()}")
    results = out["results"]
    assert results.n_items == 300 and results.n_errors == 0 and results.accuracy == 1.0  # 0 lost
    ids = [r.item_id for r in results.records]
    assert len(ids) == len(set(ids)) == 300  # 0 counted twice
    answered = Counter(_asked(r) for r in server.requests if r.status == 200 and not r.client_closed)
    assert len(answered) == 300
    twice = sum(1 for n in answered.values() if n > 1)
    print(f"{len(server.requests)} requests, {twice} answered twice, max in flight {server.stats.max_in_flight}")
    assert twice <= LIMIT  # at most the calls in flight at the kill (answered, never received)
    assert killed_at < 300 and len(worker_pids()) > len(before)  # killed mid-run; a new worker took over
    assert server.stats.max_in_flight <= LIMIT  # the dead worker's leases expire (ttl), its sockets closed


def test_cli_eval_with_ray_resumes_from_its_own_journal(cluster, tmp_path, capsys):
    import json

    from ember.cli import main

    server, _ = cluster
    server.reset()
    server.latency = 0.0
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"query": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(40)))
    argv = ["eval", "--dataset", str(path), "--evaluator", "numeric", "--system", MODEL, "--no-progress", "--ray",
            "--journal", str(tmp_path / "j.sqlite"), "--report", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0 and len(server.requests) == 40
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["systems"][MODEL]["metrics"]["accuracy"] == 1.0
    assert main(argv) == 0 and len(server.requests) == 40 and "resuming" in capsys.readouterr().out


def test_rpm_is_one_budget_for_the_cluster(cluster):
    from ember.config import get_config_manager

    server, _ = cluster
    server.reset()
    server.latency = 0.0
    manager = get_config_manager()
    manager.update_config("model_registry", {"providers": {"openai": {"rpm": 1200}}})  # 20/s, a burst of 20
    try:
        results = _run("ray", _items(60))
    finally:
        manager.update_config("model_registry", {"providers": {"openai": {"rpm": None}}})
    arrived = sorted(r.arrived for r in server.requests)
    assert results.n_items == 60 and results.accuracy == 1.0 and len(arrived) == 60
    # One bucket: (60 - 20) / 20 = 2 s at least; a bucket per worker would let them through in 1 s.
    assert arrived[-1] - arrived[0] >= 1.8


def test_no_key_travels_in_what_the_tasks_are_sent(cluster):
    import ray
    import ray.cloudpickle as cloudpickle

    from ember.eval import ModelSystem
    from ember.eval._ray_backend import _portable
    from ember.models import share_budget

    system = ModelSystem(MODEL)
    system.service.invoke_model(MODEL, "What is 1 + 1?")  # the driver's service, holding the key, is now attached
    assert KEY.encode() not in cloudpickle.dumps((_portable(system), share_budget(ray)))
    assert system._service is not None and _portable(system)._service is None


def test_the_planted_key_is_absent_from_the_ray_logs(cluster):
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = [p for p in (session / "logs").rglob("*") if p.is_file()]
    assert len(logs) > 10  # the workers', raylet's and GCS's logs of the runs above
    assert [p for p in logs if KEY.encode() in p.read_bytes()] == []
