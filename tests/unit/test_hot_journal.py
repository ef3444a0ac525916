"""The hot journal and log recovery: replid, seq and buffer survive restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.log import SEQ_RESERVE_BLOCK, HotLog
from cryptorun_daemon.metrics import Metrics


def make_log(directory: Path, *, segment_bytes: int = 1 << 20, buffer_records: int = 100) -> HotLog:
    journal = Journal(directory, segment_bytes=segment_bytes, fsync_interval=0.1, fsync_records=10)
    return HotLog("eu", journal, ReplayBuffer(buffer_records, 1 << 20), Metrics())


def trade(i: int) -> MarketRecord:
    return MarketRecord(
        "trade", {"ts": i, "venue": "v", "symbol": "A/B", "trade_id": i, "ingest_ts": 1_000 + i}
    )


def test_clean_restart_keeps_replid_seq_and_buffer(tmp_path: Path) -> None:
    """After a clean close, reopening keeps the replid, continues seq and refills the buffer."""
    first = make_log(tmp_path)
    first.open()
    for i in range(1, 51):
        first.append_local(trade(i))
    replid = first.replid
    first.close()
    second = make_log(tmp_path, buffer_records=20)
    second.open()
    assert second.replid == replid
    assert second.seq == 50
    assert (second.buffer.first_seq, second.buffer.last_seq) == (31, 50)
    assert second.append_local(trade(51)).seq == 51  # type: ignore[union-attr]


def test_unclean_end_takes_new_replid_and_truncates_torn_tail(tmp_path: Path) -> None:
    """A torn last line (crash mid-write) is truncated; an unclean journal gets a new replid."""
    first = make_log(tmp_path)
    first.open()
    for i in range(1, 11):
        first.append_local(trade(i))
    replid = first.replid
    first.journal.flush()  # crash: no clean-close marker
    segment = first.journal.segments()[-1].path
    with segment.open("ab") as handle:
        handle.write(b'{"o":"eu","s":11,"i":')
    second = make_log(tmp_path)
    second.open()
    assert second.replid != replid
    assert second.seq == SEQ_RESERVE_BLOCK  # continues after the reservation, never reissues
    assert len(second.buffer) == 0  # old replid's records cannot be resumed


def test_corrupt_line_before_the_tail_is_an_error(tmp_path: Path) -> None:
    """Corruption anywhere but the newest segment's tail refuses to start (never skipped)."""
    first = make_log(tmp_path, segment_bytes=4096)
    first.open()
    for i in range(1, 200):
        first.append_local(trade(i))
    first.close()
    oldest = first.journal.segments()[0].path
    data = bytearray(oldest.read_bytes())
    data[10:20] = b"##########"
    oldest.write_bytes(bytes(data))
    with pytest.raises(StorageError):
        make_log(tmp_path).open()


def test_segments_roll_and_carry_checkpoints(tmp_path: Path) -> None:
    """Segments roll at segment_bytes; deleting old ones still recovers replid and seq."""
    first = make_log(tmp_path, segment_bytes=4096)
    first.open()
    first.adopt_replid("us", "peer-replid", 0)
    first.apply_mirrored("us", [b'{"o":"us","s":1,"i":1,"d":"trade","f":{}}'], 1, 1, [])
    for i in range(1, 300):
        first.append_local(trade(i))
    segments = first.journal.segments()
    assert len(segments) > 2
    with pytest.raises(StorageError):
        first.journal.delete_segment(segments[-1].index)
    for segment in segments[:-1]:
        first.journal.delete_segment(segment.index)
    replid = first.replid
    first.close()
    second = make_log(tmp_path)
    second.open()
    assert (second.replid, second.seq) == (replid, 299)
    position = second.position("us")
    assert position is not None
    assert (position.replid, position.applied_seq) == ("peer-replid", 1)


async def test_sync_counts_synced_records(tmp_path: Path) -> None:
    """sync() flushes and fsyncs everything written so far."""
    log = make_log(tmp_path)
    log.open()
    for i in range(1, 6):
        log.append_local(trade(i))
    await log.journal.sync()
    assert log.journal.synced_records == 5
    log.close()


def test_closed_log_takes_nothing(tmp_path: Path) -> None:
    """After close (shutdown), appends are refused instead of writing to a closed file."""
    log = make_log(tmp_path)
    log.open()
    log.close()
    assert log.append_local(trade(1)) is None


def test_a_batch_is_journaled_buffered_and_indexed_like_single_appends(tmp_path: Path) -> None:
    """append_local_batch gives contiguous seqs, journals the lines byte for byte (readable
    again after a restart), fills the buffer, skips a record JSON cannot encode without
    using a seq, and lets single appends continue the same stream."""
    log = make_log(tmp_path, segment_bytes=2048)
    log.open()
    bad = MarketRecord("trade", {"venue": "v", "symbol": "A/B", "price": float("nan")})
    batch = [trade(1), trade(2), bad, trade(3)]
    assert log.append_local_batch(batch) == (3, 1)
    assert log.append_local_batch([trade(i) for i in range(4, 300)]) == (296, 0)
    single = log.append_local(trade(300))
    assert single is not None
    assert single.seq == 300
    assert log.buffer.last_seq == 300
    assert len(log.journal.segments()) > 3
    log.close()
    again = make_log(tmp_path, segment_bytes=2048, buffer_records=1000)
    again.open()
    assert again.seq == 300
    records = again.buffer.read_from(1, max_records=1000, max_bytes=1 << 30)
    assert [r.seq for r in records] == list(range(1, 301))
    assert [json.loads(r.line)["f"]["ts"] for r in records] == list(range(1, 301))
    assert again.journal.local_index.locate(150) is not None


def test_a_batch_is_dropped_whole_while_the_journal_refuses_appends(tmp_path: Path) -> None:
    """While the journal refuses appends a batch takes no seq and is counted as dropped."""
    log = make_log(tmp_path)
    log.open()
    log.journal.failure = "write: [Errno 28] No space left on device"
    assert log.append_local_batch([trade(1), trade(2)]) == (0, 0)
    assert (log.seq, log.dropped) == (0, 2)
