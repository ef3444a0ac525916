"""The hot log and journal under disk faults: failed writes, failed fsyncs, damaged segments.

Faults are real kernel errors on real files: the active segment's descriptor is
swapped (``dup2``) for ``/dev/full``, whose writes fail with ENOSPC and whose
fsync fails with EINVAL, and swapped back to "free the disk".
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptorun_daemon.errors import JournalDamagedError, StorageError
from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.journal_repair import check_journal, salvage_journal
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.metrics import Metrics


def make_log(directory: Path, *, segment_bytes: int = 1 << 20, buffer_bytes: int = 0) -> HotLog:
    journal = Journal(
        directory,
        segment_bytes=segment_bytes,
        fsync_interval=0.1,
        fsync_records=1000,
        buffer_bytes=buffer_bytes,
    )
    return HotLog("eu", journal, ReplayBuffer(1000, 1 << 20), Metrics())


def trade(i: int) -> MarketRecord:
    return MarketRecord(
        "trade", {"ts": i, "venue": "v", "symbol": "A/B", "trade_id": i, "ingest_ts": 1_000 + i}
    )


@contextlib.contextmanager
def disk_full(journal: Journal) -> Iterator[None]:
    """Point the active segment's descriptor at /dev/full until the block ends."""
    fd = journal._fd
    assert fd is not None
    saved = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)
    os.close(full)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def local_seqs(directory: Path) -> list[int]:
    seqs = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            body = json.loads(line)  # every line parses: no half-written line anywhere
            if body.get("o") == "eu" and "s" in body and "ctl" not in body:
                seqs.append(body["s"])
    return seqs


def dropped(log: HotLog) -> float:
    value = log.metrics.registry.get_sample_value(
        "cryptorun_hot_dropped_total", {"region": "eu", "reason": "disk"}
    )
    return value or 0.0


async def test_enospc_does_not_consume_seq_and_ingest_resumes(tmp_path: Path) -> None:
    """A write failing with ENOSPC never advances seq past what the journal holds: later
    records are refused and counted as dropped (reason disk), the seq does not move, and once
    the disk takes writes again retry() writes the held bytes and appends continue at the
    next seq; the journal holds 1..N without a hole and the log reopens cleanly."""
    log = make_log(tmp_path)
    log.open()
    for i in range(1, 6):
        log.append_local(trade(i))
    with disk_full(log.journal):
        held = log.append_local(trade(6))  # taken into the journal's buffer, not yet on disk
        assert held is not None
        assert held.seq == 6
        assert log.journal.failure is not None
        assert "No space left" in log.journal.failure
        assert not log.journal.writable
        for i in range(7, 10):
            assert log.append_local(trade(i)) is None
        assert log.seq == 6
        assert log.buffer.last_seq == 6
        assert dropped(log) == 3
        assert await log.journal.retry() is False  # still full: stays failed
    assert await log.journal.retry() is True
    record = log.append_local(trade(10))
    assert record is not None
    assert record.seq == 7
    log.close()
    assert local_seqs(tmp_path) == list(range(1, 8))
    again = make_log(tmp_path)
    again.open()
    assert (again.seq, again.replid) == (7, log.replid)
    again.close()


async def test_mirrored_and_control_writes_are_refused_while_failed(tmp_path: Path) -> None:
    """While the journal is failed, a mirrored batch or a replid adoption raises (nothing is
    applied, the applied position does not move), so the mirror client resumes later."""
    log = make_log(tmp_path)
    log.open()
    log.adopt_replid("us", "peer", 0)
    with disk_full(log.journal):
        log.append_local(trade(1))
        with pytest.raises(StorageError):
            log.apply_mirrored("us", [b'{"o":"us","s":1,"i":1,"d":"trade","f":{}}'], 1, 1, [])
        with pytest.raises(StorageError):
            log.adopt_replid("us", "other", 5)
    position = log.position("us")
    assert position is not None
    assert (position.replid, position.applied_seq) == ("peer", 0)
    assert await log.journal.retry() is True
    log.close()


async def test_close_while_failed_leaves_a_journal_that_restarts(tmp_path: Path) -> None:
    """Shutting down while the disk is full loses only the held buffer: no close marker, no
    half line; the next start succeeds under a new replid and seq continues after the seq
    reservation on disk (never reissuing a seq that may have left)."""
    log = make_log(tmp_path)
    log.open()
    for i in range(1, 4):
        log.append_local(trade(i))
    with disk_full(log.journal):
        log.append_local(trade(4))
        log.close()
    again = make_log(tmp_path)
    again.open()
    assert again.seq == log.reserved >= 3
    assert again.replid != log.replid
    again.close()


async def test_failed_fsync_rewrites_unsynced_bytes_before_trusting_a_sync(
    tmp_path: Path,
) -> None:
    """After fsync fails, a later successful fsync alone is not trusted: the journal refuses
    appends, and retry() writes every byte since the last good fsync again from its own copy
    before syncing. Proven by wiping that range on disk (as the kernel may drop the pages):
    after retry() the file holds the records again, and only then are they counted synced."""
    log = make_log(tmp_path)
    log.open()
    log.append_local(trade(1))
    await log.journal.sync()
    synced = log.journal.synced_records
    for i in range(2, 6):
        log.append_local(trade(i))
    segment = log.journal.segments()[-1].path
    with disk_full(log.journal):
        await log.journal.sync()  # fsync on /dev/full fails (EINVAL)
        assert log.journal.failure is not None
        assert log.journal.failure.startswith("fsync")
    assert log.journal.synced_records == synced
    assert log.append_local(trade(6)) is None
    data = segment.read_bytes()
    start = data.index(b'"s":2,')
    start = data.rindex(b"\n", 0, start) + 1
    with segment.open("r+b") as handle:  # the pages the failed fsync may have lost
        handle.seek(start)
        handle.write(b"\0" * (len(data) - start))
    assert await log.journal.retry() is True
    assert segment.read_bytes() == data
    assert log.journal.synced_records == synced + 4
    log.append_local(trade(7))
    log.close()
    assert local_seqs(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_authority_passes_to_peer_while_local_is_suspended() -> None:
    """A suspended local source loses authority at once to a peer with the same market, even
    though its last record is still fresh; resuming it gives authority back."""
    now = 10_000_000_000
    authority = SourceAuthority("eu", ["eu", "us"], gate_seconds=5.0, now_ns=lambda: now)
    authority.observe("eu", "v", "A/B", now)
    authority.observe("us", "v", "A/B", now)
    assert authority.current[("v", "A/B")] == "eu"
    authority.suspend("eu", "disk")
    assert authority.current[("v", "A/B")] == "us"
    assert authority.status()["suspended"] == {"eu": "disk"}
    authority.resume("eu")
    assert authority.current[("v", "A/B")] == "eu"


def _journal_with_segments(directory: Path) -> HotLog:
    log = make_log(directory, segment_bytes=4096, buffer_bytes=1 << 16)
    log.open()
    for i in range(1, 200):
        log.append_local(trade(i))
    log.close()
    assert len(log.journal.segments()) >= 3
    return log


def test_bad_line_inside_the_newest_segment_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    """A garbage line with good lines after it in the newest segment refuses to start (naming
    segment and offset) instead of truncating every record after it as a torn tail."""
    log = make_log(tmp_path)
    log.open()
    for i in range(1, 20):
        log.append_local(trade(i))
    log.close()
    segment = sorted(tmp_path.glob("*.jsonl"))[-1]
    data = segment.read_bytes()
    offset = data.index(b'{"o":"eu","s":5,')
    segment.write_bytes(data[:offset] + b"garbage\n" + data[offset:])
    with pytest.raises(JournalDamagedError) as damaged:
        make_log(tmp_path).open()
    assert (damaged.value.path, damaged.value.offset) == (segment, offset)
    assert segment.read_bytes()[offset:].startswith(b"garbage\n")  # nothing was cut


def test_valid_json_that_is_no_journal_line_is_damage(tmp_path: Path) -> None:
    """A line like {"x":1} in an older segment is reported as damage, not a crash."""
    _journal_with_segments(tmp_path)
    oldest = sorted(tmp_path.glob("*.jsonl"))[0]
    data = oldest.read_bytes()
    cut = data.index(b"\n") + 1
    oldest.write_bytes(data[:cut] + b'{"x":1}\n' + data[cut:])
    with pytest.raises(JournalDamagedError) as damaged:
        make_log(tmp_path).open()
    assert damaged.value.offset == cut
    assert check_journal(tmp_path).damage is not None


def test_salvage_moves_the_tail_aside_records_the_gap_and_the_log_opens(tmp_path: Path) -> None:
    """salvage keeps every moved byte under the quarantine folder, cuts the damaged segment at
    the damage, writes a gap for the lost local seqs in a new segment, and the log then opens
    (new replid, seq past the lost range, the gap in local_gaps)."""
    journal_dir = tmp_path / "journal"
    _journal_with_segments(journal_dir)
    segments = sorted(journal_dir.glob("*.jsonl"))
    middle = segments[1]
    data = middle.read_bytes()
    offset = data.index(b"\n", len(data) // 2) + 1
    middle.write_bytes(data[:offset] + b"#garbage#" + data[offset:])
    later_bytes = {p.name: p.read_bytes() for p in segments[2:]}
    result = salvage_journal(journal_dir, tmp_path / "quarantine", local_origin="eu", now_ns=1)
    assert result.damage is not None
    assert result.damage.offset == offset
    assert result.quarantine is not None
    assert (result.quarantine / f"{middle.name}.from-{offset}").read_bytes() == (
        b"#garbage#" + data[offset:]
    )
    for name, content in later_bytes.items():
        assert (result.quarantine / name).read_bytes() == content
    assert middle.read_bytes() == data[:offset]
    gap = result.gaps[0]
    assert gap["reason"] == "salvaged"
    assert gap["missing_to"] == 199
    assert check_journal(journal_dir).damage is None
    log = make_log(journal_dir)
    log.open()
    assert log.seq >= 199  # lost seqs are never handed out again (nor reserved ones)
    assert log.local_gaps[-1]["missing_from"] == gap["missing_from"]
    assert log.append_local(trade(500)).seq == log.seq  # type: ignore[union-attr]
    log.close()


def test_salvage_refuses_while_the_journal_is_open(tmp_path: Path) -> None:
    """Salvage takes the journal's lock: it refuses while a daemon holds the journal open."""
    import subprocess
    import sys

    log = make_log(tmp_path)
    log.open()
    try:
        code = (
            "import sys; from pathlib import Path;"
            "from cryptorun_daemon.hot.journal_repair import salvage_journal\n"
            "try:\n salvage_journal(Path(sys.argv[1]), Path(sys.argv[2]), local_origin='eu')\n"
            "except Exception as e:\n print(type(e).__name__, e); sys.exit(3)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path), str(tmp_path / "q")],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 3, result.stderr
        assert "in use by another process" in result.stdout
    finally:
        log.close()


def test_errno_of_dev_full_is_enospc() -> None:
    """The fault injector really produces ENOSPC (guards the tests above)."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as failed:
            os.write(fd, b"x")
        assert failed.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
