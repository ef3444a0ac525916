"""Per-symbol ``trade_id`` bookkeeping: gap detection and replay deduplication.

Kraken v2 documents ``trade_id`` as "a sequence number, unique per book", so
for one symbol every id after the first should be exactly one more than the
previous. Two things break that on purpose or by accident:

* the ``trade`` snapshot sent after each (re)subscribe repeats the last 50
  trades, most of which we already ingested: ids at or below the last one seen
  are dropped as duplicates;
* messages lost in transit, or more than 50 trades during a disconnect, leave
  a hole: the jump is counted once as a gap and the missing ids are summed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class TradeVerdict(Enum):
    """What to do with one observed trade id."""

    FIRST = "first"
    """No earlier id to compare with: accept."""
    NEXT = "next"
    """Exactly the previous id plus one: accept."""
    GAP = "gap"
    """Ids were skipped: accept, and count the gap."""
    DUPLICATE = "duplicate"
    """At or below the last accepted id (a replayed snapshot): drop."""

    @property
    def accepted(self) -> bool:
        return self is not TradeVerdict.DUPLICATE


@dataclass
class TradeSequence:
    """The trade id sequence of one symbol, kept across reconnects."""

    last_id: int | None = None
    gaps: int = 0
    missing_ids: int = 0
    duplicates: int = 0
    last_gap: tuple[int, int] | None = None
    """``(first_missing, last_missing)`` of the most recent gap."""

    def observe(self, trade_id: int) -> TradeVerdict:
        """Classify ``trade_id`` and, unless it is a duplicate, advance the sequence."""
        if self.last_id is None:
            self.last_id = trade_id
            return TradeVerdict.FIRST
        if trade_id <= self.last_id:
            self.duplicates += 1
            return TradeVerdict.DUPLICATE
        previous, self.last_id = self.last_id, trade_id
        if trade_id == previous + 1:
            return TradeVerdict.NEXT
        self.gaps += 1
        self.missing_ids += trade_id - previous - 1
        self.last_gap = (previous + 1, trade_id - 1)
        return TradeVerdict.GAP
