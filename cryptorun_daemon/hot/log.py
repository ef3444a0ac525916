"""The region's hot log: stamps local records, applies mirrored ones, wakes subscribers.

Local ingestion is authoritative for the local region: every locally ingested
record gets ``(origin=region, seq)`` with seq contiguous from 1 under a random
replication id created with the log. Mirrored records keep their origin and
seq; they are journaled like local ones but never re-served (the mirror server
only streams this region's own origin, so active-active cannot loop).

A seq is handed out only to a record the journal has taken: while the journal
refuses appends (a full or failing disk), local records are dropped and
counted in ``cryptorun_hot_dropped_total{region,reason="disk"}``, and the seq
does not move, so the stream stays contiguous when the disk comes back.

Seqs are reserved in blocks of :data:`SEQ_RESERVE_BLOCK`: a ``reserve``
journal line is fsynced before the first seq of a block is issued, and a
restart after a crash continues after the reservation. Records in the
crash's unsynced window may already be at peers, so their seqs are never
issued again with other contents (found by the chaos suite, seed 1).
The next block is reserved ahead, once half of the current one is issued: its
line is appended and fsynced by the journal's syncer thread like any record,
so at a steady rate no reservation blocks the event loop. Only when issuing
outruns that fsync does the log write and fsync a reservation on the loop, as
it did for every block before (an fsync of ~6 ms on an idle disk, hundreds on
a busy one: every second at 10,000 records/s, a stall of the whole stream).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from cryptorun_daemon.errors import JournalUnavailableError
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.record import HotRecord, encode_record, encode_records_batch
from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.hot.log")

# One fsync per this many local records; a crash skips at most this many seqs.
SEQ_RESERVE_BLOCK = 10_000
FreshnessObserver = Callable[[str, str, str, int], None]  # origin, venue, symbol, ingest_ns


def new_replid() -> str:
    """A fresh replication id (160 random bits, like Redis's 40 hex chars)."""
    return secrets.token_hex(20)


@dataclass
class OriginPosition:
    """How far this region has applied one origin's stream."""

    replid: str
    applied_seq: int = 0
    applied_ingest_ns: int = 0
    head_seq: int = 0
    gaps: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))


class HotLog:
    """Sequenced local log plus the applied positions of every mirrored origin.

    Resource handling: :meth:`open` recovers from (and opens) the journal;
    :meth:`close` writes a clean-close marker so the next start keeps the replid.
    """

    def __init__(
        self, region: str, journal: Journal, buffer: ReplayBuffer, metrics: Metrics
    ) -> None:
        self.region = region
        self.journal = journal
        self.buffer = buffer
        self.metrics = metrics
        self.replid = ""
        self.seq = 0
        # Invariant: seq <= reserved, and a ``reserve`` line for ``reserved`` is fsynced.
        self.reserved = 0
        # The next block's reservation, appended but maybe not fsynced yet:
        # (its upper seq, the journal's appended_bytes right after its line).
        self._ahead: tuple[int, int] | None = None
        # Reservations that had to write and fsync on the event loop (issuing outran
        # the reservation made ahead): 1 per start, then 0 at a steady rate.
        self.blocking_reservations = 0
        self.origins: dict[str, OriginPosition] = {}
        self.observers: list[FreshnessObserver] = []
        self._waiters: set[asyncio.Event] = set()
        self._local_records = metrics.hot_records_total.labels(region=region, origin=region)
        self._dropped_disk = metrics.hot_dropped_total.labels(region=region, reason="disk")
        self.dropped = 0
        # Unfillable gaps in this region's own stream (a salvaged journal), newest last.
        self.local_gaps: deque[dict[str, Any]] = deque(maxlen=20)
        self.recovered_clean = False
        self.recovered_torn_bytes = 0
        self.opened = False
        self.closed = False

    # ------------------------------------------------------------------ life
    def open(self) -> None:
        """Recover replid, seq, replay buffer and mirrored positions from the journal.

        A journal that ended cleanly keeps its replid and seq continues; one that
        ended in a crash keeps counting seq but takes a new replid, because the
        unsynced window it lost may already be at peers under the old id (the
        Redis rule: no partial resync across an unclean restart). An empty
        journal starts a new replid at seq 0.
        """
        recovery = self.journal.recover(
            local_origin=self.region,
            tail_records=self.buffer.max_records,
            tail_bytes=self.buffer.max_bytes,
        )
        self.recovered_clean = recovery.clean
        self.recovered_torn_bytes = recovery.torn_bytes
        local = recovery.origins.pop(self.region, None)
        self.reserved = recovery.reserved
        if local is not None and local.replid and recovery.clean:
            self.replid, self.seq = local.replid, local.last_seq
            for record in recovery.tail:
                self.buffer.append(record)
        else:
            # Seqs up to the reservation may have reached peers before the crash
            # lost them here; reissuing one would give peers two different
            # records under one (origin, seq). Continue after the reservation.
            self.seq = max(local.last_seq if local is not None else 0, self.reserved)
            self.replid = new_replid()
            self.journal.write_control(
                {"ctl": "replid", "o": self.region, "r": self.replid, "s": self.seq}
            )
            if local is not None:
                log.warning(
                    "hot journal was not closed cleanly; new replid",
                    replid=self.replid,
                    seq=self.seq,
                )
        for origin, state in recovery.origins.items():
            self.origins[origin] = OriginPosition(state.replid, state.last_seq)
        for entry in recovery.gaps:
            if entry.get("origin") == self.region:
                self.local_gaps.append(entry)
                continue
            position = self.origins.get(str(entry.get("origin")))
            if position is not None:
                position.gaps.append(entry)
        self.journal.on_roll = self._checkpoint
        self.opened = True
        log.info(
            "hot log open",
            region=self.region,
            replid=self.replid,
            seq=self.seq,
            buffered=len(self.buffer),
            clean=recovery.clean,
        )

    def _reserve_through(self, seq: int) -> None:
        """Durably reserve local seqs through ``seq`` (and a block beyond) before issuing them.

        Error handling: :class:`JournalUnavailableError` (disk full or failing)
        propagates before any seq is consumed, like any journal append.
        """
        ahead = self._ahead
        if ahead is not None and self.journal.durable_bytes >= ahead[1]:
            # The syncer's fsync covered the reservation made ahead: it now counts.
            self.reserved = max(self.reserved, ahead[0])
            self._ahead = ahead = None
        if seq <= self.reserved:
            if ahead is None and seq > self.reserved - SEQ_RESERVE_BLOCK // 2:
                self._reserve_ahead()
            return
        upto = seq - 1 + SEQ_RESERVE_BLOCK
        self.journal.write_control_durable({"ctl": "reserve", "o": self.region, "s": upto})
        self.reserved = upto
        self._ahead = None  # covered (and exceeded) by this durable line
        self.blocking_reservations += 1

    def _reserve_ahead(self) -> None:
        """Append the next block's reservation; it counts once the syncer has fsynced it.

        Not issuing any seq yet, it cannot fail an append: a journal that
        refuses it now is asked again by the next batch.
        """
        upto = self.reserved + SEQ_RESERVE_BLOCK
        try:
            self.journal.write_control({"ctl": "reserve", "o": self.region, "s": upto})
        except JournalUnavailableError:
            return
        self._ahead = (upto, self.journal.appended_bytes)
        self.journal.request_sync()

    def _checkpoint(self) -> list[dict[str, Any]]:
        bodies = [
            {"ctl": "replid", "o": self.region, "r": self.replid, "s": self.seq},
            # Each segment carries the reservation, so deleting old segments keeps it.
            {"ctl": "reserve", "o": self.region, "s": self.reserved},
        ]
        bodies += [
            {"ctl": "replid", "o": origin, "r": p.replid, "s": p.applied_seq}
            for origin, p in self.origins.items()
        ]
        return bodies

    def close(self) -> None:
        """Stop accepting records and close the journal cleanly (keeps the replid)."""
        if not self.closed:
            self.closed = True
            self.journal.close(clean=True)

    # --------------------------------------------------------- local ingest
    def append_local(self, record: MarketRecord, now_ns: int | None = None) -> HotRecord | None:
        """Stamp, journal, buffer and announce one locally ingested record.

        Returns ``None`` (record not taken) once the log is closed for shutdown,
        and while the journal refuses appends (the record is counted as dropped
        with reason ``disk``; the seq is not consumed).
        Error handling: ``ValueError`` for a record whose fields JSON cannot
        encode; nothing is written and the seq is not consumed.
        """
        if self.closed:
            return None
        if not self.journal.writable:
            self._drop()
            return None
        fields = record.fields
        ingest_ns = fields.get("ingest_ts")
        if not isinstance(ingest_ns, int):
            ingest_ns = now_ns if now_ns is not None else time.time_ns()
            fields = {**fields, "ingest_ts": ingest_ns}
        hot = encode_record(self.region, self.seq + 1, ingest_ns, record.dataset, fields)
        try:
            self._reserve_through(hot.seq)
            self.journal.write_local(hot.line, hot.seq)
        except JournalUnavailableError:
            self._drop()
            return None
        # The journal has the record (in its buffer at least): only now is the seq used.
        self.seq = hot.seq
        self.buffer.append(hot)
        self._local_records.inc()
        for observe in self.observers:
            observe(self.region, hot.venue, hot.symbol, ingest_ns)
        for event in self._waiters:
            event.set()
        return hot

    def append_local_batch(
        self, records: Sequence[MarketRecord], now_ns: int | None = None
    ) -> tuple[int, int]:
        """Stamp, journal, buffer and announce a batch of local records in one go.

        The per-record work is only the encoding: the journal takes the batch in
        one append, the buffer in one extend, observers hear the newest record
        of each market once and subscribers are woken once.
        Returns ``(taken, refused)``: records that got a seq, and records whose
        fields JSON cannot encode (skipped, no seq consumed). Nothing is taken
        once the log is closed; while the journal refuses appends the whole
        batch is dropped and counted (reason ``disk``).
        """
        if self.closed or not records:
            return 0, 0
        if not self.journal.writable:
            self._drop(len(records))
            return 0, 0
        now = now_ns if now_ns is not None else time.time_ns()
        region = self.region
        items: list[tuple[int, str, dict[str, Any]]] = []
        for record in records:
            fields = record.fields
            ingest_ns = fields.get("ingest_ts")
            if not isinstance(ingest_ns, int):
                ingest_ns = now
                fields = {**fields, "ingest_ts": now}
            items.append((ingest_ns, record.dataset, fields))
        hots, refused_at = encode_records_batch(region, self.seq + 1, items)
        refused = len(refused_at)
        if not hots:
            return 0, refused
        try:
            self._reserve_through(hots[-1].seq)
            taken = self.journal.write_local_lines([hot.line for hot in hots], hots[0].seq)
        except JournalUnavailableError:
            self._drop(len(hots))
            return 0, refused
        if taken < len(hots):  # a segment roll failed inside the batch
            self._drop(len(hots) - taken)
            hots = hots[:taken]
            if not hots:
                return 0, refused
        # The journal has the records (in its buffer at least): only now are the seqs used.
        self.seq = hots[-1].seq
        self.buffer.extend(hots)
        self._local_records.inc(len(hots))
        if self.observers:
            latest = {(hot.venue, hot.symbol): hot.ingest_ns for hot in hots}  # last one wins
            for (venue, symbol), ingest_ns in latest.items():
                for observe in self.observers:
                    observe(region, venue, symbol, ingest_ns)
        for event in self._waiters:
            event.set()
        return len(hots), refused

    def _drop(self, count: int = 1) -> None:
        self.dropped += count
        self._dropped_disk.inc(count)

    def waiter(self) -> asyncio.Event:
        """An event set whenever a local record is appended (one per subscriber)."""
        event = asyncio.Event()
        self._waiters.add(event)
        return event

    def drop_waiter(self, event: asyncio.Event) -> None:
        self._waiters.discard(event)

    # ------------------------------------------------------ mirrored origins
    def position(self, origin: str) -> OriginPosition | None:
        return self.origins.get(origin)

    def adopt_replid(self, origin: str, replid: str, applied_seq: int) -> OriginPosition:
        """Start following ``origin`` under ``replid`` with ``applied_seq`` as applied.

        Error handling: :class:`JournalUnavailableError` (nothing adopted) while
        the journal refuses appends; the mirror client reconnects later.
        """
        if not self.closed:
            self.journal.write_control(
                {"ctl": "replid", "o": origin, "r": replid, "s": applied_seq}
            )
        position = self.origins.get(origin)
        if position is None:
            position = self.origins[origin] = OriginPosition(replid)
        position.replid = replid
        position.applied_seq = applied_seq
        return position

    def apply_mirrored(
        self,
        origin: str,
        lines: list[bytes],
        last_seq: int,
        last_ingest_ns: int,
        latest: list[tuple[str, str, int]],
    ) -> None:
        """Journal contiguous mirrored records ending at ``last_seq`` (already deduplicated).

        After :meth:`close` nothing is applied, so the next start resumes from here.
        Error handling: :class:`JournalUnavailableError` (nothing applied) while
        the journal refuses appends; the mirror client reconnects and resumes
        from the last applied seq once it takes them again.
        """
        if self.closed:
            return
        position = self.origins[origin]
        self.journal.write_lines(lines)
        position.applied_seq = last_seq
        position.applied_ingest_ns = last_ingest_ns
        self.metrics.hot_records_total.labels(region=self.region, origin=origin).inc(len(lines))
        for venue, symbol, ingest_ns in latest:
            for observe in self.observers:
                observe(origin, venue, symbol, ingest_ns)

    def record_gap(self, origin: str, gap: dict[str, Any]) -> None:
        """Remember an unfillable gap (journaled, so warm backfill finds it after restarts)."""
        entry = {"origin": origin, **gap}
        if self.closed:
            return
        self.journal.write_control({"ctl": "gap", **entry})
        position = self.origins.get(origin)
        if position is not None:
            position.gaps.append(entry)
        self.metrics.hot_seq_gaps_total.labels(region=self.region, origin=origin).inc()
        log.warning("hot stream gap", **entry)

    def update_gauges(self) -> None:
        region = self.region
        self.metrics.hot_buffer_records.labels(region=region).set(len(self.buffer))
        self.metrics.hot_buffer_bytes.labels(region=region).set(self.buffer.bytes)
        self.metrics.hot_journal_bytes.labels(region=region).set(self.journal.bytes_on_disk)
