"""Local seqs are reserved durably: a crash never reissues a seq with other contents.

Regression for chaos seed 1 (``scripts/chaos.sh --seed 1 --duration 60``):
the primary was killed at a fail point; records in its unsynced window had
already been mirrored, the restarted origin reissued their seqs for new
records, and peers ended up with two different records under one
(origin, seq) — the checker's ``hot.no_conflict`` and ``hot.complete``.
"""

from __future__ import annotations

from pathlib import Path

from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.log import SEQ_RESERVE_BLOCK, HotLog
from cryptorun_daemon.metrics import Metrics


def make_log(directory: Path, *, segment_bytes: int = 1 << 20) -> HotLog:
    journal = Journal(directory, segment_bytes=segment_bytes, fsync_interval=0.1, fsync_records=10)
    return HotLog("eu", journal, ReplayBuffer(100, 1 << 20), Metrics())


def trade(i: int) -> MarketRecord:
    return MarketRecord(
        "trade", {"ts": i, "venue": "v", "symbol": "A/B", "trade_id": i, "ingest_ts": 1_000 + i}
    )


def test_crash_losing_the_unsynced_window_never_reissues_its_seqs(tmp_path: Path) -> None:
    """After a crash that lost records 6-10 (possibly already at peers), new records get
    seqs above every seq ever issued, so no (origin, seq) can name two different records."""
    first = make_log(tmp_path)
    first.open()
    issued = [first.append_local(trade(i)) for i in range(1, 11)]
    first.journal.flush()  # crash: no clean close; the kernel kept records 1-5 only
    segment = first.journal.segments()[-1].path
    data = segment.read_bytes()
    keep = data.index(issued[5].line)  # type: ignore[union-attr]
    segment.write_bytes(data[:keep])

    second = make_log(tmp_path)
    second.open()
    record = second.append_local(trade(11))
    assert record is not None
    assert record.seq > max(r.seq for r in issued if r is not None)


def test_reservation_survives_deleting_old_segments(tmp_path: Path) -> None:
    """Every segment carries the reservation, so one in a later segment still holds after
    the segment that first recorded it is deleted by the sealer."""
    first = make_log(tmp_path, segment_bytes=4096)
    first.open()
    for i in range(1, 200):
        first.append_local(trade(i))
    first.journal.flush()  # crash
    segments = first.journal.segments()
    assert len(segments) > 2
    for segment in segments[:-1]:
        segment.path.unlink()

    second = make_log(tmp_path)
    second.open()
    assert second.seq >= SEQ_RESERVE_BLOCK


async def test_at_a_steady_rate_the_next_block_is_reserved_ahead_by_the_syncer(
    tmp_path: Path,
) -> None:
    """Once half a block is issued, the next block's reservation is appended and made
    durable by the journal's ordinary sync (off the event loop), so issuing seqs past
    the first block needs no reservation written and fsynced on the loop; and a crash
    right after still never reissues a seq (the reservation on disk covers them)."""
    log = make_log(tmp_path)
    log.open()
    half = SEQ_RESERVE_BLOCK // 2
    batch = [trade(i) for i in range(1, 1001)]
    issued = 0
    while issued < SEQ_RESERVE_BLOCK + half:
        taken, _ = log.append_local_batch(batch)
        issued += taken
        await log.journal.sync()  # what the syncer task does every fsync_interval
    assert log.seq == issued
    assert log.reserved >= log.seq
    assert log.blocking_reservations == 1  # the first block only
    log.journal.flush()  # crash: no clean close

    again = make_log(tmp_path)
    again.open()
    record = again.append_local(trade(1))
    assert record is not None
    assert record.seq > issued
