"""One symbol's level-2 order book, maintained the way Kraken's v2 guide requires.

Rules (Kraken "Spot Websockets (v2) Book Checksum" guide):

* a snapshot replaces the book;
* an update is applied level by level *in message order* (one message may
  update the same price several times: the last one wins);
* ``qty == 0`` deletes the level;
* after every message the book is truncated to the subscribed depth, because
  Kraken sends no delete for a level pushed out of scope by a better one;
* only then is the checksum over the top 10 levels compared.

Prices and quantities are ``Decimal`` end to end so the checksum can be rebuilt
exactly (see :mod:`.checksum`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from cryptorun_daemon.ingest.kraken.checksum import CHECKSUM_LEVELS, Level, book_checksum


@dataclass(frozen=True, slots=True)
class Precision:
    """Decimals Kraken uses for a pair's prices and quantities (``instrument`` channel)."""

    price: int
    qty: int


class OrderBook:
    """Bids and asks of one symbol, truncated to ``depth`` levels per side.

    Not thread-safe and not async: the connector owns one per symbol and calls
    it from its receive loop.
    """

    def __init__(self, *, depth: int, precision: Precision) -> None:
        if depth < 1:
            raise ValueError(f"depth must be positive, got {depth}")
        self.depth = depth
        self.precision = precision
        self._bids: dict[Decimal, Decimal] = {}
        self._asks: dict[Decimal, Decimal] = {}

    # --- mutation ------------------------------------------------------------------

    def apply_snapshot(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book (zero quantities in a snapshot are ignored)."""
        self._bids.clear()
        self._asks.clear()
        self.apply_update(bids, asks)

    def apply_update(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply one message's level changes in order, then truncate to depth."""
        _apply_levels(self._bids, bids)
        _apply_levels(self._asks, asks)
        self._truncate()

    def _truncate(self) -> None:
        if len(self._bids) > self.depth:
            keep = set(heapq.nlargest(self.depth, self._bids))
            for price in [p for p in self._bids if p not in keep]:
                del self._bids[price]
        if len(self._asks) > self.depth:
            keep = set(heapq.nsmallest(self.depth, self._asks))
            for price in [p for p in self._asks if p not in keep]:
                del self._asks[price]

    # --- reading -------------------------------------------------------------------

    def bids(self, limit: int | None = None) -> list[Level]:
        """Bids best (highest price) first, at most ``limit`` of them."""
        prices = heapq.nlargest(limit if limit is not None else len(self._bids), self._bids)
        return [(price, self._bids[price]) for price in prices]

    def asks(self, limit: int | None = None) -> list[Level]:
        """Asks best (lowest price) first, at most ``limit`` of them."""
        prices = heapq.nsmallest(limit if limit is not None else len(self._asks), self._asks)
        return [(price, self._asks[price]) for price in prices]

    def checksum(self) -> int:
        """Kraken's CRC32 over the top 10 asks then the top 10 bids."""
        return book_checksum(
            self.asks(CHECKSUM_LEVELS),
            self.bids(CHECKSUM_LEVELS),
            price_precision=self.precision.price,
            qty_precision=self.precision.qty,
        )

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)


def _apply_levels(side: dict[Decimal, Decimal], levels: Iterable[Level]) -> None:
    for price, qty in levels:
        if qty == 0:
            side.pop(price, None)
        else:
            side[price] = qty
