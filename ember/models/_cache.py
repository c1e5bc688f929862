"""An opt-in on-disk response cache (SQLite).

The key is a SHA-256 over the model id, every sampling parameter, the messages and the
*sample index*: asking for sample 0 and sample 1 of the same prompt at temperature 0.7 are
two different calls and must not collapse into one cached answer. Credentials are never
part of the key or the value. Entries are immutable: a hit returns a fresh object.

Switch it on with config (``app.cache.enabled: true``, ``app.cache.directory``), the
environment (``EMBER_APP__CACHE__ENABLED=true``), or ``ModelService(cache=ResponseCache(dir))``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path

from ember.models._types import ChatRequest, ProviderResult

__all__ = ["ResponseCache", "cache_key"]

logger = logging.getLogger("ember.models.cache")

_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, model_id TEXT NOT NULL, text TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, finish_reason TEXT,
    created REAL DEFAULT (julianday('now')))"""


def cache_key(model_id: str, request: ChatRequest) -> str:
    payload = {
        "model": model_id,
        "messages": [[m.role, m.content] for m in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "stop": request.stop,
        "seed": request.seed,
        "top_p": request.top_p,
        "schema": request.output_schema,
        "sample_index": request.sample_index,
        "extra": dict(request.extra),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """SQLite-backed store of provider results, safe across threads and processes (WAL).

    A cache that cannot be used (a corrupt or foreign file, an unwritable directory) is
    bypassed: one warning names the file, and calls proceed uncached. A cache is an
    optimisation, so it never fails a call.
    """

    FILENAME = "responses.sqlite"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self.path = self.directory / self.FILENAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.broken: str | None = None  # why the cache is bypassed, once it is
        self.hits = 0
        self.misses = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as error:
            self._bypass(error)

    def _bypass(self, error: BaseException) -> None:
        """Stop using the file for the rest of this cache's life, and say so once."""
        if self.broken is None:
            self.broken = f"{type(error).__name__}: {error}"
            logger.warning(
                "response cache %s cannot be used (%s); it is bypassed and calls proceed uncached. "
                "Delete the file, or point app.cache.directory elsewhere, to cache again.",
                self.path, self.broken,
            )
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def get(self, key: str) -> ProviderResult | None:
        with self._lock:
            if self._db is None:
                return None
            try:
                row = self._db.execute(
                    "SELECT text, input_tokens, output_tokens, finish_reason, model_id FROM responses WHERE key=?",
                    (key,),
                ).fetchone()
            except sqlite3.Error as error:
                self._bypass(error)
                return None
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return ProviderResult(*row)

    def put(self, key: str, model_id: str, result: ProviderResult) -> None:
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses (key, model_id, text, input_tokens, output_tokens, finish_reason)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (key, model_id, result.text, result.input_tokens, result.output_tokens, result.finish_reason),
                )
            except sqlite3.Error as error:
                self._bypass(error)

    def clear(self) -> None:
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("DELETE FROM responses")
            except sqlite3.Error as error:
                self._bypass(error)

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            try:
                return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            except sqlite3.Error as error:
                self._bypass(error)
                return 0

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
