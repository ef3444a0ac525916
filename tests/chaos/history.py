"""The run's history: one JSON line per fault and client operation (Jepsen's history).

Every entry carries ``mono`` (seconds on the harness's monotonic clock since
the run started), ``wall`` (RFC 3339 UTC) and ``kind``:

- ``fault`` — ``phase`` ``start``/``end``, ``fault`` (the fault kind), ``target``
  and the fault's parameters; ``id`` pairs a start with its end;
- ``op`` — a client operation (``failover`` with ``phase`` ``invoke`` then
  ``ok``/``fail``/``info`` as in Jepsen: ``info`` = outcome unknown);
- ``event`` — what the harness saw (``exit`` of a process it did not kill,
  ``restart``, ``heal``, ``settled``);
- ``sample`` — a scrape of one region's ``/metrics`` and ``/v1/status``
  (written to ``samples.jsonl`` instead, to keep the history readable).

Resource handling: the file is opened for appending once and every line is
flushed as written, so a crash of the harness leaves a readable history.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptorun_daemon.timefmt import format_rfc3339, utc_from_ns


class History:
    """Append-only JSON-lines writer shared by the nemesis, the client and the observer."""

    def __init__(self, path: Path, started: float | None = None) -> None:
        self.path = path
        self.started = time.monotonic() if started is None else started
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the run started (monotonic)."""
        return time.monotonic() - self.started

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one entry stamped with monotonic and wall time; returns it."""
        entry = {
            "mono": round(self.now(), 4),
            "wall": format_rfc3339(utc_from_ns(time.time_ns())),
            "kind": kind,
        }
        entry.update(fields)
        with self._lock:
            self._file.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
            self._file.flush()
        return entry

    def close(self) -> None:
        self._file.close()


def read_history(path: Path) -> Iterator[dict[str, Any]]:
    """Every entry of a history file, in order."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
