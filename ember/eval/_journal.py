"""The results journal: every finished item is committed to SQLite before the next is counted.

Why SQLite: one file, atomic commits, readable by any tool, and a process killed with
``kill -9`` loses at most the items still in flight (WAL mode: a committed transaction
survives the process; ``synchronous=NORMAL`` skips the fsync per commit that only power
loss would need). A resumed run reads which ``(system, item)`` pairs finished and never
calls them again; items that ended in an error are retried.

The journal also stores the run's description (dataset, systems, evaluators, prompt);
resuming with a different description is refused rather than mixing two experiments.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ember._runtime import EmberError
from ember.eval._record import ItemRecord

__all__ = ["Journal", "JournalMismatchError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    system TEXT NOT NULL, item_id TEXT NOT NULL, position INTEGER NOT NULL,
    output TEXT, scores TEXT NOT NULL, correct TEXT NOT NULL, details TEXT NOT NULL,
    latency_s REAL NOT NULL, cost_usd REAL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    calls INTEGER NOT NULL, attempts INTEGER NOT NULL, error TEXT,
    PRIMARY KEY (system, item_id)
);
CREATE INDEX IF NOT EXISTS records_order ON records (system, position);
"""
_COLUMNS = (
    "system, item_id, position, output, scores, correct, details, latency_s, cost_usd, "
    "input_tokens, output_tokens, calls, attempts, error"
)


class JournalMismatchError(EmberError):
    """The journal belongs to a different run (other dataset, systems, evaluators or prompt)."""


def _row_to_record(row: tuple[Any, ...]) -> ItemRecord:
    system, item_id, position, output, scores, correct, details, latency, cost, tin, tout, calls, attempts, error = row
    return ItemRecord(
        system, item_id, position, output, json.loads(scores), json.loads(correct), json.loads(details),
        latency, cost, tin, tout, calls, attempts, error,
    )  # fmt: skip


class Journal:
    """A SQLite file of item records (``":memory:"`` for runs that need no resume)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def begin(self, run: Mapping[str, Any]) -> bool:
        """Bind the journal to ``run``; returns True when resuming that same run.

        Raises :class:`JournalMismatchError` naming what differs from the stored run.
        """
        text = json.dumps(run, sort_keys=True, default=str)
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'run'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('run', ?)", (text,))
                return False
        stored = json.loads(row[0])
        current = json.loads(text)
        if stored != current:
            differs = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
            raise JournalMismatchError(
                f"journal {self.path} holds a different run (differs in: {', '.join(differs)}); "
                "use another journal path to start a new run"
            )
        return True

    def write(self, record: ItemRecord) -> None:
        """Commit one record (replacing an earlier error for the same item)."""
        values = (
            record.system, record.item_id, record.position, record.output,
            json.dumps(dict(record.scores)), json.dumps(dict(record.correct)), json.dumps(dict(record.details), default=str),
            record.latency_s, record.cost_usd, record.input_tokens, record.output_tokens,
            record.calls, record.attempts, record.error,
        )  # fmt: skip
        with self._lock:
            self._conn.execute(f"INSERT OR REPLACE INTO records ({_COLUMNS}) VALUES ({', '.join('?' * 14)})", values)

    def finished(self, system: str) -> set[str]:
        """Ids of the items ``system`` completed without error."""
        with self._lock:
            rows = self._conn.execute("SELECT item_id FROM records WHERE system = ? AND error IS NULL", (system,))
            return {item_id for (item_id,) in rows}

    def spent(self) -> tuple[float, int]:
        """Known cost over all records, and how many records had an unknown cost."""
        with self._lock:
            known, unknown = self._conn.execute(
                "SELECT COALESCE(SUM(cost_usd), 0), COUNT(*) - COUNT(cost_usd) FROM records"
            ).fetchone()
        return float(known), int(unknown)

    def count(self, system: str) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM records WHERE system = ?", (system,)).fetchone()[0]

    def systems(self) -> list[str]:
        with self._lock:
            return [s for (s,) in self._conn.execute("SELECT DISTINCT system FROM records ORDER BY system")]

    def records(self, system: str, *, batch: int = 512) -> Iterator[ItemRecord]:
        """``system``'s records in dataset order, fetched ``batch`` rows at a time."""
        last = -1
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM records WHERE system = ? AND position > ? ORDER BY position LIMIT ?",
                    (system, last, batch),
                ).fetchall()
            if not rows:
                return
            yield from map(_row_to_record, rows)
            last = rows[-1][2]

    def record_at(self, system: str, index: int) -> ItemRecord:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM records WHERE system = ? ORDER BY position LIMIT 1 OFFSET ?", (system, index)
            ).fetchone()
        return _row_to_record(row)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"Journal({self.path!r})"
