"""The bounded in-memory replay buffer of the local origin's newest records.

It is the Redis-PSYNC "backlog": a subscriber that asks to resume from a seq
still inside the buffer gets a partial resync; older positions get an explicit
gap. The buffer is the *only* per-origin memory the mirror server uses, so its
two limits (records and bytes) bound the origin's memory no matter how many or
how slow the subscribers are: a subscriber is a cursor into this buffer, never
a queue of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Final

from cryptorun_daemon.hot.record import HotRecord

_LINE: Final = attrgetter("line")


def _size_of(records: Sequence[HotRecord]) -> int:
    """``sum(r.size for r in records)`` without a Python-level loop (one call per batch)."""
    return sum(map(len, map(_LINE, records))) + len(records)


class ReplayBuffer:
    """Seq-contiguous records, oldest evicted first when either limit is exceeded.

    Storage is a list with a moving head (amortised O(1) eviction, O(1) index by
    seq), compacted when the dead prefix outgrows the live part.
    """

    def __init__(self, max_records: int, max_bytes: int) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("buffer limits must be positive")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._items: list[HotRecord] = []
        self._head = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def first_seq(self) -> int | None:
        """Oldest seq held, ``None`` when empty."""
        return self._items[self._head].seq if len(self) else None

    @property
    def last_seq(self) -> int | None:
        """Newest seq held, ``None`` when empty."""
        return self._items[-1].seq if len(self) else None

    def append(self, record: HotRecord) -> None:
        """Add the next record (its seq must be ``last_seq + 1``), then evict to the limits.

        Error handling: raises ``ValueError`` on a non-contiguous seq, which
        would make index-by-seq wrong.
        """
        last = self.last_seq
        if last is not None and record.seq != last + 1:
            raise ValueError(f"replay buffer expects seq {last + 1}, got {record.seq}")
        self._items.append(record)
        self.bytes += record.size
        self._evict()

    def extend(self, records: list[HotRecord]) -> None:
        """Add a contiguous batch (first seq ``last_seq + 1``), evicting once at the end.

        Error handling: ``ValueError`` when the batch does not continue the buffer
        or is not contiguous itself.
        """
        if not records:
            return
        first, last = records[0].seq, self.last_seq
        if (last is not None and first != last + 1) or records[-1].seq != first + len(records) - 1:
            raise ValueError(f"replay buffer expects seqs from {(last or 0) + 1}, got {first}..")
        self._items.extend(records)
        self.bytes += _size_of(records)
        self._evict()

    def _evict(self) -> None:
        items = self._items
        # Over the record limit: drop the excess in one step (the common case once full).
        excess = min(len(self) - self.max_records, len(self) - 1)
        if excess > 0:
            self.bytes -= _size_of(items[self._head : self._head + excess])
            self._head += excess
        # Keep at least the newest record even when it alone exceeds max_bytes.
        while len(self) > 1 and (len(self) > self.max_records or self.bytes > self.max_bytes):
            self.bytes -= items[self._head].size
            self._head += 1
        if self._head > 1024 and self._head * 2 > len(items):
            del items[: self._head]
            self._head = 0

    def read_from(self, seq: int, *, max_records: int, max_bytes: int) -> list[HotRecord]:
        """Records from ``seq`` on, at most ``max_records`` and about ``max_bytes``.

        Returns ``[]`` when ``seq`` is past the newest record or before the
        oldest (the caller decides that the latter is a gap). At least one
        record is returned when one is available, whatever its size.
        """
        first = self.first_seq
        if first is None or seq < first or seq > self._items[-1].seq:
            return []
        start = self._head + (seq - first)
        stop = min(len(self._items), start + max_records)
        out = self._items[start:stop]
        total = 0
        for index, record in enumerate(out):
            total += record.size
            if total > max_bytes and index > 0:
                return out[:index]
        return out

    def clear(self) -> None:
        """Drop everything (a new replid starts a new seq space)."""
        self._items = []
        self._head = 0
        self.bytes = 0
