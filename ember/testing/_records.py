"""What the loopback server saw: one record per request, and live counters.

Records are written on the server's event-loop thread and read from test threads, so
reads go through a lock and return copies. Credentials are never kept: a record only says
whether an API key was sent, so a test can assert that one was without the log leaking it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any


@dataclasses.dataclass(slots=True)
class RequestRecord:
    """One request. ``arrived``/``finished`` are ``time.monotonic()`` in the server's process
    (compare arrival gaps to check backoff); ``status`` is None for a dropped connection;
    ``fault`` is the kind of fault applied, if any; ``answer`` is the text sent, if any."""

    index: int
    provider: str
    method: str
    path: str
    model: str | None
    body: Any  # the parsed JSON body; None when empty or not JSON
    stream: bool
    has_api_key: bool
    arrived: float
    finished: float | None = None
    status: int | None = None
    fault: str | None = None
    answer: str | None = None
    #: The token counts the server reported in its answer's usage (None: no answer sent).
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: The client closed the connection before the answer was sent (a cancelled call).
    client_closed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ServerStats:
    """A consistent snapshot: requests since the last reset, requests being served now,
    the most ever served at once, and client connections open now."""

    total: int
    in_flight: int
    max_in_flight: int
    connections: int


class Recorder:
    """The server's log and counters; mutated on the loop thread, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())  # notified on arrivals, for wait_for_in_flight
        self._records: list[RequestRecord] = []
        self._in_flight = self._max_in_flight = self._connections = 0

    def arrive(self, **fields: Any) -> RequestRecord:
        """Log a new request, giving it the next index."""
        with self._lock:
            record = RequestRecord(index=len(self._records), arrived=time.monotonic(), **fields)
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._lock.notify_all()
            return record

    def finish(self, record: RequestRecord, status: int | None) -> None:
        with self._lock:
            record.finished, record.status = time.monotonic(), status
            self._in_flight -= 1

    def connection(self, delta: int) -> None:
        with self._lock:
            self._connections += delta

    def records(self) -> list[RequestRecord]:
        """Finished records are never written again, so only the in-flight ones are copied."""
        with self._lock:
            return [r if r.finished is not None else dataclasses.replace(r) for r in self._records]

    def stats(self) -> ServerStats:
        with self._lock:
            return ServerStats(len(self._records), self._in_flight, self._max_in_flight, self._connections)

    def wait_for_in_flight(self, count: int, timeout: float) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: self._in_flight >= count, timeout):
                raise TimeoutError(f"{self._in_flight} requests in flight after {timeout} s, waited for {count}")

    def reset(self) -> None:
        """Forget every record and restart indexes at 0; requests still in flight stay counted."""
        with self._lock:
            self._records.clear()
            self._max_in_flight = self._in_flight
