"""Where a subscriber's next records come from: replay buffer, journal, or a gap.

The backlog a subscriber can resume from is the union of two stores of the
local origin's records under the current replid:

- the **replay buffer** (newest records, in memory) — served whenever the
  subscriber's cursor is inside it;
- the **journal segments** (every record not yet sealed and deleted) —
  served when the cursor fell behind the buffer, read off the event loop in
  batches (``journal_reader``).

A cursor reading from the journal stops at the buffer's oldest seq *as it was
when the read started*, then the next read goes to the buffer (or back to the
journal if the buffer moved on meanwhile), so the switch has no duplicate and
no hole: every read starts exactly at the cursor's next seq. Only when the
range is gone from both (segments deleted after sealing) does the subscriber
get a gap. A subscriber costs one batch in flight, never a queue, however far
behind it is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.hot.journal_reader import LineRun, ReadPosition, read_local_records
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.hot.record import HotRecord

log = structlog.get_logger("cryptorun.hot.backlog")


@dataclass
class Cursor:
    """One subscriber's place in the backlog: the next seq it needs."""

    seq: int
    journal: ReadPosition | None = None
    source: str = "buffer"
    journal_records: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """The next records for a cursor, preceded by a gap when ``gap_to`` is set.

    From the buffer they are ``records``; from the journal a ``run`` of lines
    as they are on disk (never decoded). ``gap_to`` is the first seq still
    available after the cursor's position; seqs ``cursor.seq .. gap_to - 1``
    are gone from both buffer and journal.
    """

    records: list[HotRecord]
    gap_to: int | None = None
    run: LineRun | None = None

    @property
    def last_seq(self) -> int | None:
        """The newest seq in the batch, ``None`` when it carries none."""
        if self.run is not None:
            return self.run.last_seq
        return self.records[-1].seq if self.records else None

    def lines(self) -> list[tuple[int, bytes]]:
        """``(seq, line)`` of every record in the batch (tests and tools)."""
        if self.run is not None:
            return list(enumerate(self.run.lines(), self.run.first_seq))
        return [(r.seq, r.line) for r in self.records]


class Backlog:
    """Reads the local origin's backlog for the mirror server.

    Error handling: a journal read that fails (unreadable record, I/O error)
    is logged and treated as "range not available", so the subscriber gets an
    explicit gap instead of a dead stream. Resource handling: journal reads
    run in a worker thread and hold one chunk plus one batch.
    """

    def __init__(self, hot_log: HotLog) -> None:
        self.log = hot_log
        self.journal_records_served = 0
        self.journal_reads = 0
        self.journal_read_errors = 0

    def available_from(self) -> int:
        """Oldest seq servable under the current replid (head + 1 when nothing is)."""
        hot = self.log
        candidates = [
            s for s in (hot.journal.local_index.first_seq, hot.buffer.first_seq) if s is not None
        ]
        return min(candidates) if candidates else hot.seq + 1

    async def read(self, cursor: Cursor, *, max_records: int, max_bytes: int) -> Batch:
        """The next contiguous records from ``cursor.seq`` (empty when it is at the head).

        Does not move the cursor; the caller advances it past what it sent.
        """
        hot, buffer = self.log, self.log.buffer
        if cursor.seq > hot.seq:
            return Batch([])
        first = buffer.first_seq
        if first is not None and cursor.seq >= first:
            cursor.source, cursor.journal = "buffer", None
            return Batch(buffer.read_from(cursor.seq, max_records=max_records, max_bytes=max_bytes))
        # Behind the buffer: read the journal up to where the buffer starts now.
        stop = first if first is not None else hot.seq + 1
        cursor.source = "journal"
        run = await self._read_journal(cursor, stop, max_records, max_bytes)
        if run is None:
            return Batch([], gap_to=stop)
        if run.first_seq > cursor.seq:
            return Batch([], gap_to=run.first_seq, run=run)
        return Batch([], run=run)

    async def _read_journal(
        self, cursor: Cursor, stop: int, max_records: int, max_bytes: int
    ) -> LineRun | None:
        hot = self.log
        start, segments = hot.journal.local_read_plan(cursor.seq, cursor.journal)
        if start is None:
            return None
        self.journal_reads += 1
        try:
            result = await asyncio.to_thread(
                read_local_records,
                segments,
                hot.region,
                start,
                stop_seq=stop,
                max_records=max_records,
                max_bytes=max_bytes,
            )
        except (OSError, StorageError) as exc:
            self.journal_read_errors += 1
            cursor.journal = None
            log.error(
                "hot journal read failed; serving the range as a gap",
                seq=cursor.seq,
                error=str(exc),
            )
            return None
        cursor.journal = result.position
        served = result.run.count if result.run is not None else 0
        cursor.journal_records += served
        self.journal_records_served += served
        return result.run
