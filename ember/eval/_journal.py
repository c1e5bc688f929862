"""The results journal: every finished item is committed to SQLite before the next is counted.

Why SQLite: one file, atomic commits, readable by any tool, and a process killed with
``kill -9`` loses at most the items still in flight (WAL mode: a committed transaction
survives the process; ``synchronous=NORMAL`` skips the fsync per commit that only power
loss would need). A resumed run reads which ``(system, item)`` pairs finished and never
calls them again; items that ended in an error are retried.

The journal also stores the run's identity: a fingerprint of the dataset's content (ids,
queries, answers, choices, metadata), the systems' specs, the evaluators and the prompt.
Resuming with a different identity is refused, naming what changed, rather than mixing
two experiments.

One run at a time: while a run uses a journal file it holds an exclusive lock on the
sidecar ``<journal>.lock`` (which records its pid); a second process, or a second run in
the same process, gets :class:`JournalInUseError` instead of calling every unfinished item
a second time. Readers (``finished``, ``records``) need no lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ember._runtime import EmberError
from ember.eval._record import ItemRecord

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["Journal", "JournalError", "JournalMismatchError", "JournalCorruptError", "JournalInUseError"]

#: The identity format; journals written before the dataset was fingerprinted have none.
IDENTITY_FORMAT = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    system TEXT NOT NULL, item_id TEXT NOT NULL, position INTEGER NOT NULL,
    output TEXT, scores TEXT NOT NULL, correct TEXT NOT NULL, details TEXT NOT NULL,
    latency_s REAL NOT NULL, cost_usd REAL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    calls INTEGER NOT NULL, attempts INTEGER NOT NULL, error TEXT,
    PRIMARY KEY (system, item_id)
);
"""
_INDEX = "CREATE INDEX IF NOT EXISTS records_order ON records (system, position)"
_COLUMNS = (
    "system, item_id, position, output, scores, correct, details, latency_s, cost_usd, "
    "input_tokens, output_tokens, calls, attempts, error"
)
_FRESH = "rerun with --fresh (`ember eval`) or open it with Journal(path, fresh=True), or use a new journal path"
#: What each part of a run's identity is called in a mismatch message.
_PARTS = {"dataset": "dataset content", "systems": "systems", "evaluators": "evaluators", "prompt": "prompt"}


class JournalError(EmberError):
    """A results journal cannot be used (base of the journal's errors)."""


class JournalMismatchError(JournalError):
    """The journal belongs to a different run (other dataset content, systems, evaluators or prompt)."""


class JournalCorruptError(JournalError):
    """The journal file is not a readable Ember journal (damaged, or some other file)."""


class JournalInUseError(JournalError):
    """Another run (another process, or another run in this one) is using the journal."""


def _record_to_row(record: ItemRecord) -> tuple[Any, ...]:
    """A record as the values of one row of ``records``, in ``_COLUMNS`` order."""
    return (
        record.system, record.item_id, record.position, record.output,
        json.dumps(dict(record.scores)), json.dumps(dict(record.correct)), json.dumps(dict(record.details), default=str),
        record.latency_s, record.cost_usd, record.input_tokens, record.output_tokens,
        record.calls, record.attempts, record.error,
    )  # fmt: skip


def _row_to_record(row: tuple[Any, ...]) -> ItemRecord:
    system, item_id, position, output, scores, correct, details, latency, cost, tin, tout, calls, attempts, error = row
    return ItemRecord(
        system, item_id, position, output, json.loads(scores), json.loads(correct), json.loads(details),
        latency, cost, tin, tout, calls, attempts, error,
    )  # fmt: skip


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What changed between two run identities, in words."""
    changes: list[str] = []
    old_data, new_data = stored.get("dataset") or {}, current.get("dataset") or {}
    if old_data.get("sha256") and new_data.get("sha256"):
        if (old_data.get("sha256"), old_data.get("items")) != (new_data.get("sha256"), new_data.get("items")):
            changes.append(
                f"dataset content (fingerprint {str(old_data['sha256'])[:12]}, {old_data.get('items')} items -> "
                f"{str(new_data['sha256'])[:12]}, {new_data.get('items')} items)"
            )
    elif old_data.get("name") != new_data.get("name"):
        changes.append(f"dataset ({_short(old_data.get('name'))} -> {_short(new_data.get('name'))})")
    old_sys, new_sys = stored.get("systems") or {}, current.get("systems") or {}
    if old_sys != new_sys:
        parts = [f"{label}: {_short(old_sys.get(label, '(none)'))} -> {_short(new_sys.get(label, '(none)'))}"
                 for label in sorted(old_sys.keys() | new_sys.keys()) if old_sys.get(label) != new_sys.get(label)]  # fmt: skip
        changes.append(f"systems ({'; '.join(parts)})")
    for key in ("evaluators", "prompt"):
        if stored.get(key) != current.get(key):
            changes.append(f"{_PARTS[key]} ({_short(stored.get(key))} -> {_short(current.get(key))})")
    return changes


class _FileLock:
    """An exclusive, non-blocking ``flock`` on ``<journal>.lock``, which holds the owner's pid."""

    def __init__(self, journal: str) -> None:
        self.journal, self.path = journal, f"{journal}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None or fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise JournalError(f"cannot create the lock file {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = ""
            for _ in range(20):  # the owner writes its pid right after locking
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if owner:
                    break
                time.sleep(0.005)
            os.close(fd)
            who = f"pid {owner}" if owner else "another process"
            mine = " (this process: another run still has it open)" if owner == str(os.getpid()) else ""
            raise JournalInUseError(
                f"journal {self.journal} is in use by {who}{mine}; wait for that run to finish, or use another journal path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the lock


class Journal:
    """A SQLite file of item records (``":memory:"`` for runs that need no resume).

    ``fresh=True`` discards whatever the file holds (even a damaged file) and starts over;
    it takes the run lock first, so it never pulls a journal from under a running process.
    Raises :class:`JournalCorruptError` for a file that is not a readable journal, and
    :class:`JournalError` when the file cannot be created or opened.
    """

    def __init__(self, path: str | Path = ":memory:", *, fresh: bool = False) -> None:
        self.path = str(Path(path).expanduser()) if str(path) != ":memory:" else ":memory:"
        self._lock = threading.Lock()
        self._file_lock = _FileLock(self.path)
        self._conn: sqlite3.Connection | None = None
        self._running = False  # a run has begun on this object and not released it
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise JournalError(f"cannot create the journal's folder {Path(self.path).parent}: {error.strerror}") from None
            if Path(self.path).is_dir():
                raise JournalError(f"journal {self.path} is a directory; give a file path")
            if fresh:
                self._file_lock.acquire()
                for suffix in ("", "-wal", "-shm"):
                    try:
                        Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                    except OSError as error:
                        self._file_lock.release()
                        raise JournalError(f"cannot discard journal {self.path}{suffix}: {error.strerror}") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            with self._db():
                if self.path != ":memory:":
                    self._wal()
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
                columns = [row[1] for row in self._conn.execute("PRAGMA table_info(records)")]
                if columns != [c.strip() for c in _COLUMNS.split(",")]:
                    raise JournalCorruptError(
                        f"{self.path} is not an Ember results journal (its records table has other columns); "
                        f"to replace it, {_FRESH}"
                    )
                self._conn.execute(_INDEX)
        except sqlite3.Error as error:  # connect itself: a path SQLite cannot open
            raise JournalError(f"cannot open journal {self.path}: {error}") from None

    def _wal(self) -> None:
        """Switch to WAL mode. SQLite answers "database is locked" at once, without waiting, when
        another process is switching the same new file at the same moment: wait for it here."""
        assert self._conn is not None
        deadline = time.monotonic() + 30
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the thread lock; SQLite's errors become the journal's typed ones."""
        with self._lock:
            if self._conn is None:
                raise JournalError(f"journal {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.OperationalError as error:
                if "not a database" in str(error) or "malformed" in str(error):
                    raise self._corrupt(error) from None
                raise JournalError(f"journal {self.path}: {error}") from None
            except sqlite3.DatabaseError as error:  # "file is not a database", "disk image is malformed"
                raise self._corrupt(error) from None

    def _corrupt(self, error: Exception) -> JournalCorruptError:
        return JournalCorruptError(
            f"journal {self.path} is damaged or not a journal ({error}); to start over, {_FRESH}, or delete the file"
        )

    # -- the run's lock and identity ---------------------------------------------------------
    def acquire(self) -> None:
        """Take the run lock (no-op for ``":memory:"`` or when held); :class:`JournalInUseError` if taken."""
        if self.path != ":memory:":
            self._file_lock.acquire()

    def release(self) -> None:
        """Give the run lock back (a later run may take it)."""
        self._running = False
        self._file_lock.release()

    def stored_run(self) -> dict[str, Any] | None:
        """The identity of the run this journal holds, or ``None`` when it holds none yet."""
        with self._db() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'run'").fetchone()
        return None if row is None else json.loads(row[0])

    def begin(self, run: Mapping[str, Any]) -> bool:
        """Take the run lock and bind the journal to ``run``; True when resuming that same run.

        Raises :class:`JournalInUseError` when another run holds the journal, and
        :class:`JournalMismatchError` naming what differs from the stored run.
        """
        with self._lock:
            if self._running:
                raise JournalInUseError(
                    f"journal {self.path} is in use by another run in this process (pid {os.getpid()}); "
                    "wait for it to finish, or use another journal"
                )
            self._running = True
        try:
            self.acquire()
            return self._bind(run)
        except BaseException:
            self.release()
            raise

    def _bind(self, run: Mapping[str, Any]) -> bool:
        text = json.dumps(run, sort_keys=True, default=str)
        with self._db() as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('run', ?)", (text,))
            stored_text = conn.execute("SELECT value FROM meta WHERE key = 'run'").fetchone()[0]
            done = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        if stored_text == text:
            return done > 0
        stored, current = json.loads(stored_text), json.loads(text)
        if stored == current:
            return done > 0
        if "format" not in stored:
            raise JournalMismatchError(
                f"journal {self.path} was written by an earlier Ember that did not fingerprint the dataset's content, "
                f"so it cannot tell whether the dataset changed; to start over, {_FRESH}"
            )
        changes = _differences(stored, current) or ["run settings"]
        raise JournalMismatchError(
            f"journal {self.path} holds a different run ({done} record(s)); changed: {'; '.join(changes)}. "
            f"To start over, {_FRESH}"
        )

    # -- records -------------------------------------------------------------------------------
    def write(self, *records: ItemRecord) -> None:
        """Commit records, all or none, in one transaction (each replaces an earlier error for its item).

        One commit costs about 50 us of the caller's time whatever it holds, so a group is
        far cheaper per record than one commit each.
        """
        rows = [_record_to_row(record) for record in records]
        insert = f"INSERT OR REPLACE INTO records ({_COLUMNS}) VALUES ({', '.join('?' * 14)})"
        with self._db() as conn:
            if len(rows) == 1:
                conn.execute(insert, rows[0])
                return
            conn.execute("BEGIN")
            try:
                conn.executemany(insert, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def finished(self, system: str) -> set[str]:
        """Ids of the items ``system`` completed without error."""
        with self._db() as conn:
            rows = conn.execute("SELECT item_id FROM records WHERE system = ? AND error IS NULL", (system,))
            return {item_id for (item_id,) in rows}

    def spent(self) -> tuple[float, int]:
        """Known cost over all records, and how many records had an unknown cost."""
        with self._db() as conn:
            known, unknown = conn.execute(
                "SELECT COALESCE(SUM(cost_usd), 0), COUNT(*) - COUNT(cost_usd) FROM records"
            ).fetchone()
        return float(known), int(unknown)

    def count(self, system: str) -> int:
        with self._db() as conn:
            return conn.execute("SELECT COUNT(*) FROM records WHERE system = ?", (system,)).fetchone()[0]

    def systems(self) -> list[str]:
        with self._db() as conn:
            return [s for (s,) in conn.execute("SELECT DISTINCT system FROM records ORDER BY system")]

    def records(self, system: str, *, batch: int = 512) -> Iterator[ItemRecord]:
        """``system``'s records in dataset order, fetched ``batch`` rows at a time."""
        last = -1
        while True:
            with self._db() as conn:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM records WHERE system = ? AND position > ? ORDER BY position LIMIT ?",
                    (system, last, batch),
                ).fetchall()
            if not rows:
                return
            yield from map(_row_to_record, rows)
            last = rows[-1][2]

    def record_at(self, system: str, index: int) -> ItemRecord:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM records WHERE system = ? ORDER BY position LIMIT 1 OFFSET ?", (system, index)
            ).fetchone()
        return _row_to_record(row)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self.release()

    def __repr__(self) -> str:
        return f"Journal({self.path!r})"
