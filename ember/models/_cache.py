"""An opt-in on-disk response cache (SQLite).

The key is a SHA-256 over the model id, every sampling parameter, the messages and the
*sample index*: asking for sample 0 and sample 1 of the same prompt at temperature 0.7 are
two different calls and must not collapse into one cached answer. Credentials are never
part of the key or the value. Entries are immutable: a hit returns a fresh object.

Switch it on with config (``app.cache.enabled: true``, ``app.cache.directory``), the
environment (``EMBER_APP__CACHE__ENABLED=true``), or ``ModelService(cache=ResponseCache(dir))``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from ember.models._types import ChatRequest, ProviderResult

__all__ = ["ResponseCache", "cache_key"]

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
    """SQLite-backed store of provider results, safe across threads and processes (WAL)."""

    FILENAME = "responses.sqlite"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / self.FILENAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> ProviderResult | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, input_tokens, output_tokens, finish_reason, model_id FROM responses WHERE key=?", (key,)
            ).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return ProviderResult(*row)

    def put(self, key: str, model_id: str, result: ProviderResult) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, model_id, text, input_tokens, output_tokens, finish_reason)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, model_id, result.text, result.input_tokens, result.output_tokens, result.finish_reason),
            )

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM responses")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
