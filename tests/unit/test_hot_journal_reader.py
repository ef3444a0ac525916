"""Reading the local origin's records back from journal segments, and the backlog that
switches between journal and replay buffer (what the mirror server streams from)."""

from __future__ import annotations

import asyncio
import tempfile
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptorun_daemon.hot import protocol
from cryptorun_daemon.hot.backlog import Backlog, Batch, Cursor
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.journal_reader import (
    LocalIndex,
    ReadPosition,
    ReadResult,
    read_local_records,
)
from cryptorun_daemon.hot.line_check import check_batch
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.hot.record import encode_record
from cryptorun_daemon.metrics import Metrics


def make_log(directory: Path, *, segment_bytes: int = 4096, buffer_records: int = 10) -> HotLog:
    journal = Journal(directory, segment_bytes=segment_bytes, fsync_interval=1, fsync_records=1000)
    return HotLog("eu", journal, ReplayBuffer(buffer_records, 1 << 20), Metrics())


def trade(i: int, pad: int = 0) -> MarketRecord:
    fields = {"ts": i, "venue": "v", "symbol": "A/B", "trade_id": i, "ingest_ts": 1_000 + i}
    if pad:
        fields["pad"] = "x" * pad
    return MarketRecord("trade", fields)


def fill(log: HotLog, count: int, *, mirrored_every: int = 0) -> dict[int, bytes]:
    """Append ``count`` local records (and a peer's record every ``mirrored_every``)."""
    lines: dict[int, bytes] = {}
    peer_seq = 0
    for i in range(count):
        hot = log.append_local(trade(i))
        assert hot is not None
        lines[hot.seq] = hot.line
        if mirrored_every and i % mirrored_every == 0:
            peer_seq += 1
            peer = encode_record("us", peer_seq, 5, "trade", {"venue": "v", "symbol": "A/B"})
            log.apply_mirrored("us", [peer.line], peer_seq, 5, [])
    return lines


def read(
    log: HotLog,
    seq: int,
    *,
    stop: int,
    max_records: int = 1000,
    position: ReadPosition | None = None,
) -> ReadResult:
    start, segments = log.journal.local_read_plan(seq, position)
    assert start is not None
    return read_local_records(
        segments, "eu", start, stop_seq=stop, max_records=max_records, max_bytes=1 << 20
    )


def test_range_read_crosses_segments_skipping_checkpoints_and_other_origins(
    tmp_path: Path,
) -> None:
    """A range read returns exactly the local records asked for, byte-identical, across
    many segments whose starts hold checkpoint lines and which interleave a peer's records."""
    log = make_log(tmp_path)
    log.open()
    log.adopt_replid("us", "peer", 0)
    lines = fill(log, 400, mirrored_every=3)
    assert len(log.journal.segments()) > 5
    got, position = [], None
    seq = 17
    while seq < 350:
        result = read(log, seq, stop=350, max_records=37, position=position)
        assert result.records
        assert [r.seq for r in result.records] == list(range(seq, seq + len(result.records)))
        got += result.records
        seq, position = result.position.seq, result.position
    assert [r.seq for r in got] == list(range(17, 350))
    assert all(r.line == lines[r.seq] for r in got)
    assert {r.origin for r in got} == {"eu"}


def test_read_honours_stop_seq_and_the_record_and_byte_caps(tmp_path: Path) -> None:
    """Never past stop_seq; at most max_records; about max_bytes but at least one record."""
    log = make_log(tmp_path)
    log.open()
    fill(log, 100)
    assert [r.seq for r in read(log, 5, stop=9).records] == [5, 6, 7, 8]
    assert len(read(log, 5, stop=100, max_records=3).records) == 3
    start, segments = log.journal.local_read_plan(5, None)
    assert start is not None
    one = read_local_records(segments, "eu", start, stop_seq=100, max_records=100, max_bytes=1)
    assert [r.seq for r in one.records] == [5]


def test_partial_trailing_line_is_not_read_until_its_newline_lands(tmp_path: Path) -> None:
    """A line still being written (no newline yet) is not returned; the saved position picks
    it up once it is complete, without re-reading what was already returned."""
    log = make_log(tmp_path, segment_bytes=1 << 20)
    log.open()
    fill(log, 5)
    log.journal.flush()
    segment = log.journal.segments()[-1].path
    sixth = encode_record("eu", 6, 1_006, "trade", {"venue": "v", "symbol": "A/B"}).line
    with segment.open("ab") as handle:
        handle.write(sixth[:20])
    first = read_local_records(
        [(1, segment)],
        "eu",
        ReadPosition(1, 1, 0),
        stop_seq=100,
        max_records=100,
        max_bytes=1 << 20,
    )
    assert [r.seq for r in first.records] == [1, 2, 3, 4, 5]
    with segment.open("ab") as handle:
        handle.write(sixth[20:] + b"\n")
    second = read_local_records(
        [(1, segment)], "eu", first.position, stop_seq=100, max_records=100, max_bytes=1 << 20
    )
    assert [r.seq for r in second.records] == [6]


def test_torn_tail_after_a_crash_is_truncated_and_old_replid_is_not_served(
    tmp_path: Path,
) -> None:
    """After a crash the torn tail is truncated and a new replid starts after the reserved
    seq: the journal serves only records under the new replid, from reserved seq + 1."""
    first = make_log(tmp_path)
    first.open()
    fill(first, 50)
    first.journal.flush()  # crash: no clean-close marker, a torn last line
    with first.journal.segments()[-1].path.open("ab") as handle:
        handle.write(b'{"o":"eu","s":51,"i":')
    second = make_log(tmp_path)
    second.open()
    base = second.seq
    assert base == first.reserved >= 50
    assert second.journal.local_index.first_seq is None
    assert Backlog(second).available_from() == base + 1
    lines = fill(second, 20)
    result = read(second, base + 1, stop=base + 21)
    assert [r.seq for r in result.records] == list(range(base + 1, base + 21))
    assert all(r.line == lines[r.seq] for r in result.records)
    assert Backlog(second).available_from() == base + 1


def test_clean_restart_rebuilds_the_index_from_the_segments(tmp_path: Path) -> None:
    """After a clean close the same replid continues and every old record is readable."""
    first = make_log(tmp_path)
    first.open()
    lines = fill(first, 120)
    first.close()
    second = make_log(tmp_path)
    second.open()
    lines.update(fill(second, 10))
    result = read(second, 1, stop=131)
    assert [r.seq for r in result.records] == list(range(1, 131))
    assert all(r.line == lines[r.seq] for r in result.records)


def test_a_deleted_segment_ends_the_batch_and_the_next_read_starts_past_the_hole(
    tmp_path: Path,
) -> None:
    """Batches stay contiguous: a read stops before a hole left by a deleted segment, and the
    next read's first record is the first seq after the hole (the caller's gap)."""
    log = make_log(tmp_path)
    log.open()
    fill(log, 300)
    segments = log.journal.segments()
    hole = segments[2]
    log.journal.delete_segment(hole.index)
    before = read(log, 1, stop=301)
    last = before.records[-1].seq
    assert [r.seq for r in before.records] == list(range(1, last + 1))
    after = read(log, last + 1, stop=301, position=before.position)
    assert after.records[0].seq > last + 1
    seqs = [r.seq for r in after.records]
    assert seqs == list(range(seqs[0], 301))


def test_local_index_is_sparse_and_locates_the_last_mark_at_or_before_a_seq() -> None:
    """One mark per segment start and per spacing bytes; locate never overshoots a seq."""
    index = LocalIndex(spacing=1000)
    for seq in range(1, 101):
        segment = 1 if seq <= 50 else 2
        index.note(seq, segment, (seq - (0 if segment == 1 else 50)) * 100)
    assert len(index) == 10  # per segment: offsets 100, 1100, 2100, 3100, 4100
    assert index.locate(25) == ReadPosition(25, 1, 2100)
    assert index.locate(60) == ReadPosition(60, 2, 100)
    assert index.locate(0) == ReadPosition(0, 1, 100)  # before the oldest: start there
    index.drop_segment(1)
    assert index.first_seq == 51
    index.reset(100)
    assert after_reset(index) == (None, 100, None)


def after_reset(index: LocalIndex) -> tuple[int | None, int, ReadPosition | None]:
    """(first_seq, base, locate(101)), read afresh: inline, mypy would keep first_seq
    narrowed to the int asserted before reset()."""
    return index.first_seq, index.base, index.locate(101)


def test_a_read_holds_one_chunk_and_one_batch_not_the_segment(tmp_path: Path) -> None:
    """Reading a batch from the middle of a 16 MiB segment allocates about one chunk plus the
    batch, never the segment (the slow-consumer memory bound for journal reads)."""
    log = make_log(tmp_path, segment_bytes=64 << 20)
    log.open()
    for i in range(40_000):
        log.append_local(trade(i, pad=300))
    log.journal.flush()
    assert log.journal.segments()[-1].size > 16 << 20
    start, segments = log.journal.local_read_plan(30_000, None)
    assert start is not None
    tracemalloc.start()
    try:
        result = read_local_records(
            segments, "eu", start, stop_seq=40_001, max_records=100, max_bytes=1 << 20
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.seq for r in result.records] == list(range(30_000, 30_100))
    assert peak < 4 << 20


async def test_backlog_switches_from_journal_to_buffer_without_duplicates_or_holes(
    tmp_path: Path,
) -> None:
    """A cursor far behind a 10-record buffer reads the journal, then the buffer, while the
    log keeps growing between reads: every seq exactly once, in order, and no gap."""
    log = make_log(tmp_path)
    log.open()
    lines = fill(log, 500)
    backlog = Backlog(log)
    cursor, got, sources = Cursor(1), [], set()
    while cursor.seq <= log.seq:
        batch = await backlog.read(cursor, max_records=64, max_bytes=1 << 20)
        assert batch.gap_to is None
        got += batch.lines()
        last = batch.last_seq
        assert last is not None
        cursor.seq = last + 1
        sources.add(cursor.source)
        if log.seq < 1500:
            lines.update(fill(log, 37))  # ingest keeps going while the subscriber catches up
    assert [seq for seq, _ in got] == list(range(1, log.seq + 1))
    assert all(line == lines[seq] for seq, line in got)
    assert sources == {"journal", "buffer"}
    assert backlog.journal_records_served > 0
    assert (await backlog.read(cursor, max_records=64, max_bytes=1 << 20)).last_seq is None


async def test_backlog_reports_a_gap_only_for_a_range_gone_from_journal_and_buffer(
    tmp_path: Path,
) -> None:
    """Once the segments holding a range are deleted (sealed), reading it gives a gap to the
    oldest seq still held, then records from there."""
    log = make_log(tmp_path)
    log.open()
    fill(log, 300)
    for segment in log.journal.segments()[:3]:
        log.journal.delete_segment(segment.index)
    backlog = Backlog(log)
    oldest = backlog.available_from()
    assert oldest > 1
    batch = await backlog.read(Cursor(1), max_records=64, max_bytes=1 << 20)
    assert batch.gap_to == oldest
    assert batch.lines()[0][0] == oldest
    for segment in log.journal.segments()[:-1]:
        log.journal.delete_segment(segment.index)
    first_buffered = log.buffer.first_seq
    assert first_buffered is not None
    behind = await backlog.read(Cursor(oldest), max_records=64, max_bytes=1 << 20)
    assert behind.gap_to is not None
    assert behind.gap_to <= first_buffered


def _frame_of(batch: Batch, log: HotLog) -> bytes:
    """The records frame the mirror server sends for a batch (buffer records or a run)."""
    if batch.run is not None:
        run = batch.run
        return protocol.encode_run(
            log.replid,
            run.first_seq,
            run.count,
            run.body,
            first_ingest_ns=run.first_ingest_ns,
            last_ingest_ns=run.last_ingest_ns,
            head_seq=log.seq,
            latest=[],
        )
    return protocol.encode_records(log.replid, batch.records, log.seq)


async def _catch_up(
    directory: Path,
    *,
    backlog_records: int,
    buffer_records: int,
    segment_bytes: int,
    max_records: int,
    max_bytes: int,
    ingest_per_read: int,
    mirrored_every: int,
    until: int,
) -> tuple[list[int], dict[int, bytes], set[str]]:
    log = make_log(directory, segment_bytes=segment_bytes, buffer_records=buffer_records)
    log.open()
    log.adopt_replid("us", "peer", 0)
    written = fill(log, backlog_records, mirrored_every=mirrored_every)
    backlog = Backlog(log)
    cursor, seqs, sources = Cursor(1), [], set()
    while cursor.seq <= log.seq:
        batch = await backlog.read(cursor, max_records=max_records, max_bytes=max_bytes)
        assert batch.gap_to is None
        sources.add(cursor.source)
        header, lines = protocol.decode_records(_frame_of(batch, log))
        checked = check_batch(lines, origin="eu", first_seq=header.first_seq)
        assert header.first_seq == cursor.seq
        for item in checked:
            assert item.line == written[item.seq]
            seqs.append(item.seq)
        cursor.seq = header.first_seq + header.count
        if log.seq < until:
            written.update(fill(log, ingest_per_read, mirrored_every=mirrored_every))
    log.close()
    return seqs, written, sources


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backlog_records=st.integers(min_value=0, max_value=700),
    buffer_records=st.integers(min_value=1, max_value=60),
    segment_bytes=st.sampled_from([600, 4096, 1 << 20]),
    max_records=st.integers(min_value=1, max_value=200),
    max_bytes=st.sampled_from([1, 700, 1 << 20]),
    ingest_per_read=st.integers(min_value=0, max_value=80),
    mirrored_every=st.sampled_from([0, 1, 4]),
)
def test_catch_up_from_segments_hands_over_to_the_buffer_with_no_hole_or_duplicate(
    backlog_records: int,
    buffer_records: int,
    segment_bytes: int,
    max_records: int,
    max_bytes: int,
    ingest_per_read: int,
    mirrored_every: int,
) -> None:
    """Whatever the batch caps, segment size, buffer size, interleaved peer records and
    ingest between reads, a subscriber from seq 1 receives every seq exactly once, in
    order, each frame's lines byte-identical to what was journaled and accepted by the
    subscriber's line checks — across journal runs, the switch to the buffer, and back."""
    with tempfile.TemporaryDirectory() as name:
        seqs, written, sources = asyncio.run(
            _catch_up(
                Path(name),
                backlog_records=backlog_records,
                buffer_records=buffer_records,
                segment_bytes=segment_bytes,
                max_records=max_records,
                max_bytes=max_bytes,
                ingest_per_read=ingest_per_read,
                mirrored_every=mirrored_every,
                until=backlog_records + 400,
            )
        )
    assert seqs == sorted(written)
    assert seqs == list(range(1, len(seqs) + 1))
    if backlog_records > buffer_records:
        assert "journal" in sources


@given(
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=60),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=1, max_value=1000),
)
def test_noting_a_run_marks_what_noting_each_record_marks(
    lengths: list[int], segment: int, spacing: int
) -> None:
    """LocalIndex.note_run (the batched ingest path) leaves the index exactly as one
    note() per record would, also when it continues the previous batch's segment."""
    one, run = LocalIndex(spacing), LocalIndex(spacing)
    for index in (one, run):
        index.note(1, 0, 0)  # an earlier batch in segment 0
    starts, offset = [], 50
    for length in lengths:
        starts.append(offset)
        offset += length
    for i, start in enumerate(starts):
        one.note(2 + i, segment, start)
    run.note_run(2, segment, starts)
    assert (run._seqs, run._places, run._last) == (one._seqs, one._places, one._last)
