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
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from cryptorun_daemon.config import FeedConfig
from cryptorun_daemon.errors import IngestError
from cryptorun_daemon.hot.feed import MarketRecord

CHUNK = 4096  # events per deterministic RNG chunk (bounds the fast-forward at start)
MAX_BURST_SECONDS = 1.0  # a feed paused longer than this skips ahead instead of bursting
BATCH_MAX = 1024  # events per batch: bounds one append's latency and the records held at once
_AR1_BLOCK = 256  # 0.99**-256 ~ 13: the closed form below stays well inside float precision
_BASE_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}


def _ar1(steps: np.ndarray[Any, np.dtype[np.float64]], phi: float) -> np.ndarray[Any, Any]:
    """``x_n = phi * x_(n-1) + steps_n`` from ``x_(-1) = 0``, vectorised per block.

    Within a block ``x_n = phi**n * (phi * carry + sum_(j<=n) steps_j * phi**-j)``, ``carry``
    the last value of the block before;
    blocks are short so ``phi**-j`` never grows large enough to cost precision.
    """
    out = np.empty(len(steps))
    carry = 0.0
    for lo in range(0, len(steps), _AR1_BLOCK):
        block = steps[lo : lo + _AR1_BLOCK]
        n = np.arange(len(block))
        power = phi**n
        x = power * (carry * phi + np.cumsum(block / power))
        out[lo : lo + len(block)] = x
        if len(x):
            carry = float(x[-1])
    return out


class SyntheticFeed:
    """Deterministic trades (70 %) and top-N books (30 %) at ``rate`` events per second.

    Events are generated a chunk (:data:`CHUNK` grid indices) at a time with
    numpy: every random draw, price and book level of the chunk in a few array
    operations, converted to Python values once; building a batch then only
    assembles each record's field dict from those lists. Event ``k`` is a pure
    function of ``(seed, venue, k)`` (one seeded generator per chunk).

    Error handling: nothing to fail on; a config with no symbols raises
    :class:`IngestError` at construction. Resource handling: holds one chunk's
    arrays (a few hundred KiB); ``aclose`` on the iterator just stops it.
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
        self._lag_ns = 0
        # Book sizes do not depend on the event: computed once, copied per record.
        self._level_qty = [round(0.5 + 0.1 * i, 4) for i in range(self.depth)]
        # The current chunk, as Python lists indexed by k - chunk * CHUNK.
        self._is_trade: list[bool] = []
        self._is_buy: list[bool] = []
        self._price: list[float] = []
        self._qty: list[float] = []
        self._bids: list[list[float]] = []
        self._asks: list[list[float]] = []

    def event(self, k: int) -> MarketRecord:
        """The ``k``-th event of this feed (deterministic, any order)."""
        return self.events(k, k + 1)[0]

    def events(self, start: int, stop: int, ingest_ts: int | None = None) -> list[MarketRecord]:
        """Events ``start .. stop - 1``, with ``ingest_ts`` set when given."""
        out: list[MarketRecord] = []
        k = start
        while k < stop:
            chunk = k // CHUNK
            if chunk != self._chunk:
                self._enter_chunk(chunk)
            base = chunk * CHUNK
            upto = min(stop, base + CHUNK)
            out += self._build(k, upto, base, ingest_ts)
            k = upto
        return out

    def _build(self, start: int, stop: int, base: int, ingest_ts: int | None) -> list[MarketRecord]:
        venue, symbols, period = self.venue, self.symbols, self.period_ns
        count = len(symbols)
        is_trade, is_buy, price, qty = self._is_trade, self._is_buy, self._price, self._qty
        bids, asks, level_qty = self._bids, self._asks, self._level_qty
        out: list[MarketRecord] = []
        append = out.append
        for k in range(start, stop):
            i = k - base
            fields: dict[str, Any]
            if is_trade[i]:
                fields = {
                    "ts": k * period,
                    "venue": venue,
                    "symbol": symbols[k % count],
                    "side": "buy" if is_buy[i] else "sell",
                    "price": price[i],
                    "qty": qty[i],
                    "trade_id": k,
                }
                if ingest_ts is not None:
                    fields["ingest_ts"] = ingest_ts
                append(MarketRecord("trade", fields))
                continue
            fields = {
                "ts": k * period,
                "venue": venue,
                "symbol": symbols[k % count],
                "bids_px": bids[i],
                "bids_qty": level_qty.copy(),
                "asks_px": asks[i],
                "asks_qty": level_qty.copy(),
                "checksum": 0,
                "suspect": False,
            }
            if ingest_ts is not None:
                fields["ingest_ts"] = ingest_ts
            append(MarketRecord("book", fields))
        return out

    def _enter_chunk(self, chunk: int) -> None:
        """Draw and price every event of ``chunk`` with array operations."""
        self._chunk = chunk
        digest = hashlib.blake2b(f"{self.seed}:{self.venue}:{chunk}".encode(), digest_size=16)
        rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
        gauss = rng.standard_normal(CHUNK)
        uniform = rng.random((2, CHUNK))
        qty = rng.exponential(0.25, CHUNK)
        # Symbol of each event: k % len(symbols), k counted from the epoch.
        count = len(self.symbols)
        which = (np.arange(CHUNK) + chunk * CHUNK) % count
        # Mean-reverting walk in log space per symbol, restarting at 0 each chunk: step
        # 1 bp, stationary spread ~7 bp. x_n = 0.99 x_(n-1) + 1e-4 g_n, solved in closed
        # form per block (the powers of 0.99 stay within float range for a block).
        walk = np.empty(CHUNK)
        for j in range(count):
            at = np.flatnonzero(which == j)
            walk[at] = _ar1(1e-4 * gauss[at], 0.99)
        anchors = np.array([self._anchor(symbol, chunk) for symbol in self.symbols])
        price = np.round(anchors[which] * np.exp(walk), 2)
        tick = np.maximum(0.01, np.round(price * 1e-5, 2))
        levels = np.arange(1, self.depth + 1)
        offsets = tick[:, None] * levels[None, :]
        self._price = price.tolist()
        self._is_trade = (uniform[0] < 0.7).tolist()
        self._is_buy = (uniform[1] < 0.5).tolist()
        self._qty = np.round(qty + 0.0001, 8).tolist()
        self._bids = np.round(price[:, None] - offsets, 2).tolist()
        self._asks = np.round(price[:, None] + offsets, 2).tolist()

    def _anchor(self, symbol: str, chunk: int) -> float:
        """A slow deterministic drift so prices differ between chunks without jumps."""
        base = _BASE_PRICES.get(symbol.split("/", maxsplit=1)[0], 100.0)
        phase = (sum(map(ord, symbol)) + self.seed) % 97
        return base * math.exp(0.02 * math.sin(chunk * 0.05 + phase))

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
                batch = self.events(next_k, stop, ingest_ts)
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
