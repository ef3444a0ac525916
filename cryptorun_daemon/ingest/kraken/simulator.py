"""A seeded, self-consistent market for one symbol: the truth the test server publishes.

The simulated book keeps more levels than any subscriber sees, never crosses,
moves by inserts, quantity changes and deletes near the top (sometimes several
changes to one level in one step), and keeps exact ``Decimal`` prices on the
instrument's tick grid so the published checksums are Kraken's. Trades get
strictly increasing ``trade_id`` values per symbol, like Kraken's.

Simplification: trades print at the best bid or ask but do not consume book
liquidity; book and trades are both consistent on their own, which is all the
connector checks.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from cryptorun_daemon.ingest.kraken.checksum import CHECKSUM_LEVELS, book_checksum

BookSide = Literal["bids", "asks"]
Change = tuple[BookSide, Decimal, Decimal]
"""One level change in application order: ``(side, price, qty)``; qty 0 deletes."""

TRADE_SNAPSHOT_SIZE: Final = 50
"""Kraken's trade snapshot repeats the last 50 trades."""


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """A pair the server lists on its ``instrument`` channel."""

    symbol: str
    price_precision: int
    qty_precision: int
    start_price: Decimal

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]

    @property
    def tick(self) -> Decimal:
        return Decimal(1).scaleb(-self.price_precision)

    def as_pair(self) -> dict[str, Any]:
        """The pair object of an ``instrument`` snapshot (Kraken's v2 field names)."""
        return {
            "symbol": self.symbol,
            "base": self.base,
            "quote": self.quote,
            "status": "online",
            "price_precision": self.price_precision,
            "qty_precision": self.qty_precision,
            "price_increment": float(self.tick),
            "qty_increment": float(Decimal(1).scaleb(-self.qty_precision)),
            "qty_min": 0.0001,
            "cost_precision": 5,
            "cost_min": 0.5,
            "marginable": False,
            "has_index": True,
        }


DEFAULT_INSTRUMENTS: Final = {
    spec.symbol: spec
    for spec in (
        InstrumentSpec("BTC/USD", 1, 8, Decimal("60000.0")),
        InstrumentSpec("ETH/USD", 2, 8, Decimal("3000.00")),
        InstrumentSpec("SOL/USD", 2, 8, Decimal("150.00")),
    )
}


class SimulatedMarket:
    """The book and trade tape of one symbol, advanced one :meth:`step` at a time."""

    def __init__(self, spec: InstrumentSpec, *, seed: int, levels: int = 40) -> None:
        self.spec = spec
        self._rng = random.Random(f"{seed}:{spec.symbol}")
        self._levels = levels
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.next_trade_id = self._rng.randint(1_000, 9_000_000)
        self.recent_trades: deque[dict[str, Any]] = deque(maxlen=TRADE_SNAPSHOT_SIZE)
        mid = spec.start_price
        for i in range(levels):
            self.bids[mid - spec.tick * (1 + 2 * i)] = self._qty()
            self.asks[mid + spec.tick * (1 + 2 * i)] = self._qty()

    # --- reading -------------------------------------------------------------------

    def top(self, side: BookSide, n: int) -> list[tuple[Decimal, Decimal]]:
        """The ``n`` best levels of ``side``, best first."""
        levels = self.bids if side == "bids" else self.asks
        prices = sorted(levels, reverse=side == "bids")[:n]
        return [(price, levels[price]) for price in prices]

    def checksum(self) -> int:
        """Kraken's checksum of the current top 10 levels."""
        return book_checksum(
            self.top("asks", CHECKSUM_LEVELS),
            self.top("bids", CHECKSUM_LEVELS),
            price_precision=self.spec.price_precision,
            qty_precision=self.spec.qty_precision,
        )

    # --- evolution -----------------------------------------------------------------

    def step(self) -> list[Change]:
        """Apply one to three random changes near the top; return them in order."""
        changes: list[Change] = []
        for _ in range(self._rng.randint(1, 3)):
            side: BookSide = self._rng.choice(("bids", "asks"))
            action = self._rng.random()
            if action < 0.45:
                changes += self._modify(side)
            elif action < 0.75:
                changes += self._insert(side)
            else:
                changes += self._delete(side)
        changes += self._refill()
        return changes

    def trades(self, timestamp: str) -> list[dict[str, Any]]:
        """Zero to three new trades at the touch, in Kraken's v2 trade shape."""
        printed = []
        for _ in range(self._rng.choice((0, 0, 1, 1, 2, 3))):
            side = self._rng.choice(("buy", "sell"))
            price = min(self.asks) if side == "buy" else max(self.bids)
            trade = {
                "symbol": self.spec.symbol,
                "side": side,
                "price": price,
                "qty": self._qty(),
                "ord_type": self._rng.choice(("market", "limit")),
                "trade_id": self.next_trade_id,
                "timestamp": timestamp,
            }
            self.next_trade_id += 1
            self.recent_trades.append(trade)
            printed.append(trade)
        return printed

    def skip_trade_ids(self, count: int) -> None:
        """Lose ``count`` trade ids, as if those trades were never published."""
        self.next_trade_id += count

    def _modify(self, side: BookSide) -> list[Change]:
        levels = self.bids if side == "bids" else self.asks
        price = self._rng.choice(self.top(side, 12))[0]
        changes: list[Change] = []
        # Now and then touch the same level twice in one step: Kraken can send
        # several updates to one price in one message and order matters.
        for _ in range(2 if self._rng.random() < 0.2 else 1):
            levels[price] = self._qty()
            changes.append((side, price, levels[price]))
        return changes

    def _insert(self, side: BookSide) -> list[Change]:
        tick = self.spec.tick
        best_bid, best_ask = max(self.bids), min(self.asks)
        if side == "bids":
            candidates = [best_bid - tick * k for k in range(-3, 12)]
            candidates = [p for p in candidates if p < best_ask and p not in self.bids and p > 0]
            levels = self.bids
        else:
            candidates = [best_ask + tick * k for k in range(-3, 12)]
            candidates = [p for p in candidates if p > best_bid and p not in self.asks]
            levels = self.asks
        if not candidates:
            return self._modify(side)
        price = self._rng.choice(candidates)
        levels[price] = self._qty()
        return [(side, price, levels[price])]

    def _delete(self, side: BookSide) -> list[Change]:
        levels = self.bids if side == "bids" else self.asks
        if len(levels) <= 2:
            return []
        price = self._rng.choice(self.top(side, 10))[0]
        del levels[price]
        return [(side, price, Decimal(0))]

    def _refill(self) -> list[Change]:
        """Keep ``levels`` per side by adding levels behind the worst one."""
        changes: list[Change] = []
        tick = self.spec.tick
        while len(self.bids) < self._levels:
            price = min(self.bids) - tick * self._rng.randint(1, 3)
            if price <= 0:
                break
            self.bids[price] = self._qty()
            changes.append(("bids", price, self.bids[price]))
        while len(self.asks) < self._levels:
            price = max(self.asks) + tick * self._rng.randint(1, 3)
            self.asks[price] = self._qty()
            changes.append(("asks", price, self.asks[price]))
        return changes

    def _qty(self) -> Decimal:
        """A positive quantity on the instrument's grid, often with trailing zeros."""
        scale = self.spec.qty_precision
        shape = self._rng.random()
        if shape < 0.3:  # round lots: 0.1, 1.5, 2 — trailing zeros vanish on the wire
            return Decimal(self._rng.randint(1, 50)) / 10
        if shape < 0.4 and scale >= 5:  # dust: float repr uses an exponent (1e-05)
            return Decimal(self._rng.randint(1, 9)).scaleb(-5)
        return Decimal(self._rng.randint(1, 5 * 10**scale)).scaleb(-scale)
