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
