"""The built-in feeds: ``synthetic`` (seeded random walk) and ``replay`` (recorded JSONL).

Synthetic events sit on a fixed time grid: event ``k`` happens at ``k / rate``
seconds after the Unix epoch and is a pure function of ``(seed, k)``. Two
regions with the same seed therefore produce the *same* trades (same
``trade_id``, price and exchange time), exactly like two regions ingesting one
exchange, and a restarted feed continues the same sequence instead of reusing
trade ids.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptorun_daemon.config import FeedConfig
from cryptorun_daemon.errors import IngestError
from cryptorun_daemon.hot.feed import MarketRecord

CHUNK = 4096  # events per deterministic RNG chunk (bounds the fast-forward at start)
MAX_BURST_SECONDS = 1.0  # a feed paused longer than this skips ahead instead of bursting
BATCH_MAX = 1024  # events per batch: bounds one append's latency and the records held at once
_BASE_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}


class SyntheticFeed:
    """Deterministic trades (70 %) and top-N books (30 %) at ``rate`` events per second.

    Error handling: nothing to fail on; a config with no symbols raises
    :class:`IngestError` at construction. Resource handling: holds nothing
    but its RNG; ``aclose`` on the iterator just stops it.
    """

    def __init__(
        self,
        config: FeedConfig,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not config.symbols:
            raise IngestError(f"feed {config.name!r}: no symbols")
        self.name = config.name
        self.venue = config.venue
        self.symbols = tuple(config.symbols)
        self.rate = config.rate
        self.seed = config.seed
        self.depth = config.book_depth
        self.period_ns = max(1, int(1e9 / config.rate))
        self._clock_ns = clock_ns
        self._sleep = sleep
        self.emitted = 0
        self.skipped = 0
        self._chunk = -1
        self._rng = random.Random()
        self._walk: dict[str, float] = {}
        self._anchors: dict[str, float] = {}  # per chunk: _anchor() of every symbol
        self._next_k_in_chunk = 0
        self._lag_ns = 0
        # Book sizes do not depend on the event: computed once, copied per record.
        self._level_qty = [round(0.5 + 0.1 * i, 4) for i in range(self.depth)]
        self._levels = tuple(range(1, self.depth + 1))

    def event(self, k: int) -> MarketRecord:
        """The ``k``-th event of this feed (deterministic; events must be asked in order)."""
        chunk = k // CHUNK
        if chunk != self._chunk or k < self._next_k_in_chunk:
            self._enter_chunk(chunk)
        while self._next_k_in_chunk < k:
            self._step(self._next_k_in_chunk)
        return self._step(k, build=True)  # type: ignore[return-value]

    def _enter_chunk(self, chunk: int) -> None:
        self._chunk = chunk
        self._rng = random.Random(f"{self.seed}:{self.venue}:{chunk}")
        self._walk = dict.fromkeys(self.symbols, 0.0)
        self._anchors = {symbol: self._anchor(symbol) for symbol in self.symbols}
        self._next_k_in_chunk = chunk * CHUNK

    def _anchor(self, symbol: str) -> float:
        """A slow deterministic drift so prices differ between chunks without jumps."""
        base = _BASE_PRICES.get(symbol.split("/", maxsplit=1)[0], 100.0)
        phase = (sum(map(ord, symbol)) + self.seed) % 97
        return base * math.exp(0.02 * math.sin(self._chunk * 0.05 + phase))

    def _step(self, k: int, *, build: bool = False) -> MarketRecord | None:
        rng = self._rng
        symbol = self.symbols[k % len(self.symbols)]
        # Mean-reverting walk in log space: step 1 bp, stationary spread ~7 bp.
        x = self._walk[symbol] = 0.99 * self._walk[symbol] + 1e-4 * rng.gauss(0.0, 1.0)
        is_trade = rng.random() < 0.7
        side_draw, qty_draw = rng.random(), rng.expovariate(4.0)
        self._next_k_in_chunk = k + 1
        if not build:
            return None
        price = round(self._anchors[symbol] * math.exp(x), 2)
        ts = k * self.period_ns
        if is_trade:
            return MarketRecord(
                "trade",
                {
                    "ts": ts,
                    "venue": self.venue,
                    "symbol": symbol,
                    "side": "buy" if side_draw < 0.5 else "sell",
                    "price": price,
                    "qty": round(qty_draw + 0.0001, 8),
                    "trade_id": k,
                },
            )
        tick = max(0.01, round(price * 1e-5, 2))
        return MarketRecord(
            "book",
            {
                "ts": ts,
                "venue": self.venue,
                "symbol": symbol,
                "bids_px": [round(price - tick * i, 2) for i in self._levels],
                "bids_qty": self._level_qty.copy(),
                "asks_px": [round(price + tick * i, 2) for i in self._levels],
                "asks_qty": self._level_qty.copy(),
                "checksum": 0,
                "suspect": False,
            },
        )

    async def records(self) -> AsyncIterator[MarketRecord]:
        """Yield events one by one as their grid time passes (see :meth:`batches`)."""
        async for batch in self.batches():
            for record in batch:
                yield record

    async def batches(self) -> AsyncIterator[list[MarketRecord]]:
        """Yield the events whose grid time has passed, at most :data:`BATCH_MAX` at a time.

        ``ingest_ts`` is stamped once per batch (the moment it is handed over).
        A feed more than :data:`MAX_BURST_SECONDS` behind its grid skips ahead
        (counted in ``skipped``) instead of bursting; how far behind it is
        before that is :meth:`ingest_lag_seconds`.
        """
        next_k = self._clock_ns() // self.period_ns
        while True:
            now = self._clock_ns()
            due = now // self.period_ns
            # Measured before a skip, so a feed that had to skip shows how far behind it was.
            self._lag_ns = max(0, now - next_k * self.period_ns)
            if due - next_k > self.rate * MAX_BURST_SECONDS:
                self.skipped += due - next_k
                next_k = due
            while next_k <= due:
                stop = min(due + 1, next_k + BATCH_MAX)
                ingest_ts = self._clock_ns()
                batch = [self.event(k) for k in range(next_k, stop)]
                for record in batch:
                    record.fields["ingest_ts"] = ingest_ts
                self.emitted += len(batch)
                next_k = stop
                yield batch
            wait_ns = next_k * self.period_ns - self._clock_ns()
            await self._sleep(max(0.0005, wait_ns / 1e9))

    def ingest_lag_seconds(self) -> float:
        """How far behind its time grid the feed was at its last burst (before any skip)."""
        return self._lag_ns / 1e9

    def status(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "rate": self.rate,
            "seed": self.seed,
            "emitted": self.emitted,
            "skipped": self.skipped,
            "ingest_lag_seconds": round(self.ingest_lag_seconds(), 6),
        }


class ReplayFeed:
    """Replays a JSONL recording at ``speed`` × the recorded pace.

    Each line is one of: ``{"recv_ns": int, "frame": "<raw exchange text>"}``,
    ``{"recv_ns": int, "msg": {raw exchange JSON}}``, or an already normalised
    ``{"recv_ns": int, "dataset": "trade"|"book", "fields": {...}}``. Raw
    frames are decoded by the venue's handler (Kraken v2 for ``venue =
    "kraken"``); ``ingest_ts`` is stamped at replay time.

    Error handling: an unreadable file raises :class:`IngestError`; a line that
    is not JSON is counted in ``bad_lines`` and skipped. Resource handling:
    the file is read line by line and closed when the iterator ends.
    """

    def __init__(
        self,
        config: FeedConfig,
        *,
        raw_handler: Callable[[str, int], list[MarketRecord]] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if config.path is None:
            raise IngestError(f"feed {config.name!r}: replay needs a path")
        self.name = config.name
        self.venue = config.venue
        self.path: Path = config.path
        self.speed = config.speed
        self._raw_handler = raw_handler
        self._clock_ns = clock_ns
        self._sleep = sleep
        self.replayed = 0
        self.bad_lines = 0
        self.finished = False

    async def records(self) -> AsyncIterator[MarketRecord]:
        try:
            handle = self.path.open(encoding="utf-8")
        except OSError as exc:
            raise IngestError(f"feed {self.name!r}: cannot read {self.path}: {exc}") from None
        with handle:
            first_recorded: int | None = None
            started = self._clock_ns()
            for line in handle:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    if not isinstance(entry, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self.bad_lines += 1
                    continue
                recorded = entry.get("recv_ns")
                if isinstance(recorded, int):
                    first_recorded = recorded if first_recorded is None else first_recorded
                    due = started + int((recorded - first_recorded) / self.speed)
                    wait = (due - self._clock_ns()) / 1e9
                    if wait > 0:
                        await self._sleep(wait)
                for record in self._records_of(entry):
                    record.fields["ingest_ts"] = self._clock_ns()
                    self.replayed += 1
                    yield record
        self.finished = True

    def _records_of(self, entry: dict[str, Any]) -> list[MarketRecord]:
        if entry.get("dataset") in ("trade", "book") and isinstance(entry.get("fields"), dict):
            return [MarketRecord(entry["dataset"], dict(entry["fields"]))]
        frame = entry.get("frame")
        if frame is None and "msg" in entry:
            frame = json.dumps(entry["msg"])
        if not isinstance(frame, str) or self._raw_handler is None:
            self.bad_lines += 1
            return []
        return self._raw_handler(frame, self._clock_ns())

    def status(self) -> dict[str, Any]:
        return {
            "kind": "replay",
            "path": str(self.path),
            "speed": self.speed,
            "replayed": self.replayed,
            "bad_lines": self.bad_lines,
            "finished": self.finished,
        }
