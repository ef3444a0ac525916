"""The streaming sealer: durable read position, on-disk staging, redo safety, journal trim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cryptorun_daemon.config import FeedConfig
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.hot import partition_writer as pw
from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.hot.feeds_builtin import SyntheticFeed
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.record import decode_line, encode_record
from cryptorun_daemon.hot.sealer import HotSealer
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.failpoints import ENV_VAR, EXIT_CODE
from cryptorun_daemon.timefmt import format_compact, utc_from_ns

S = 1_000_000_000
HOUR = 3600 * S
T0 = 1_756_684_800 * S  # 2025-09-01T00:00:00Z
WINDOW = 600 * S
PERIOD = S // 4  # four synthetic events a second
SYMBOLS = ("BTC/USD", "ETH/USD")


def open_journal(directory: Path) -> Journal:
    journal = Journal(directory, segment_bytes=32_768, fsync_interval=1, fsync_records=10**6)
    journal.recover(local_origin="eu", tail_records=10, tail_bytes=1 << 16)
    return journal


def authority() -> SourceAuthority:
    """'eu' elected first; 'us' takes over BTC/USD at T0 + 5 min (eu went quiet); 'eu'
    is back at T0 + 15 min. ETH/USD has no election: books fall back to the best rank."""
    auth = SourceAuthority("eu", ["eu", "us"], gate_seconds=5)
    auth.observe("eu", "synthetic", "BTC/USD", T0)
    auth.observe("us", "synthetic", "BTC/USD", T0 + 299 * S)
    auth.evaluate(T0 + 300 * S)
    auth.observe("eu", "synthetic", "BTC/USD", T0 + 900 * S)
    auth.evaluate(T0 + 900 * S)
    return auth


def sealer(
    root: Path, journal: Journal, *, auth: SourceAuthority, primary: bool = True
) -> HotSealer:
    return HotSealer(
        region="eu" if primary else "us",
        root=root,
        journal=journal,
        authority=auth,
        partition_length=WINDOW / S,
        seal_grace=30,
        is_warm_primary=lambda: primary,
        epoch=lambda: 3,
        metrics=Metrics(),
    )


def feed() -> SyntheticFeed:
    config = FeedConfig(
        name="syn",
        kind="synthetic",
        venue="synthetic",
        symbols=SYMBOLS,
        rate=S / PERIOD,
        seed=11,
        book_depth=2,
    )
    return SyntheticFeed(config)


def write_events(
    journal: Journal,
    start_ns: int,
    end_ns: int,
    seqs: dict[str, int],
    kept: list[bytes] | None = None,
) -> int:
    """Journal the synthetic events in [start, end) as 'eu' records, with 'us' copies of
    every third event (trades: same trade_id; books: the peer's own book). Returns the
    number of record lines written."""
    source = feed()
    written = 0
    if not seqs:
        for origin in ("eu", "us"):
            journal.write_control({"ctl": "replid", "o": origin, "r": origin * 20, "s": 0})
            seqs[origin] = 0
    for k in range(start_ns // PERIOD, end_ns // PERIOD):
        record = source.event(k)
        fields: dict[str, Any] = {**record.fields, "ingest_ts": record.fields["ts"] + 1000}
        copies = ["eu", "us"] if k % 3 == 0 else ["eu"]
        for origin in copies:
            seqs[origin] += 1
            ingest = fields["ts"] + (2000 if origin == "eu" else 3000)
            line = encode_record(origin, seqs[origin], ingest, record.dataset, fields).line
            journal.write_line(line)
            if kept is not None:
                kept.append(line)
            written += 1
    journal.flush()
    return written


def old_sealer_files(lines: list[bytes], root: Path, auth: SourceAuthority, *, until: int) -> None:
    """The previous sealer's output for every window of the journal: all rows decoded
    into memory, grouped by window and partition, selected with ``select_rows`` and
    written with ``write_file`` (the functions the old round used), for the windows
    that end by ``until``."""
    groups: dict[tuple[int, Path], list[pw.Row]] = defaultdict(list)
    for line in lines:
        body = decode_line(line)
        row = pw.Row(body["o"], body["s"], body["i"], body["d"], body["f"])
        directory = pw.partition_dir(root, row.dataset, row.venue, row.symbol, row.ts)
        groups[(row.ts // WINDOW * WINDOW, directory)].append(row)
    for (window, directory), rows in groups.items():
        if window + WINDOW > until:
            continue
        chosen = pw.select_rows(rows, auth.source_at, auth.rank)
        if chosen:
            name = f"part-{_compact(window)}.parquet"
            pw.write_file(directory, name, chosen)


def _compact(ns: int) -> str:
    return format_compact(utc_from_ns(ns), precision="seconds")


def data_files(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in (root / "warm").rglob("*.parquet")
        if not p.name.startswith(".")
    }


async def test_streaming_output_equals_the_old_sealers_on_the_same_journal(tmp_path: Path) -> None:
    """Staged over many small rounds (some mid-window), the streaming sealer writes, for
    every window and partition, exactly the old sealer's file content: the same rows in
    the same order, the same trade dedup (authority switches) and book
    selection, and the same per-source summary."""
    journal = open_journal(tmp_path / "journal")
    seqs: dict[str, int] = {}
    lines: list[bytes] = []
    auth = authority()
    new = sealer(tmp_path / "new", journal, auth=auth)
    # Three windows, journaled and staged in slices that cut windows in the middle.
    for start in range(0, 30 * 60, 250):
        write_events(journal, T0 + start * S, T0 + (start + 250) * S, seqs, lines)
        await new.round(T0 + (start + 250) * S)
    await new.round(T0 + 30 * 60 * S + 31 * S)
    assert sorted(new.sealed) == [T0, T0 + WINDOW, T0 + 2 * WINDOW]
    old_sealer_files(lines, tmp_path / "old", auth, until=T0 + 3 * WINDOW)
    new_files, old_files = data_files(tmp_path / "new"), data_files(tmp_path / "old")
    assert sorted(new_files) == sorted(old_files)
    assert len(old_files) == 4 * 3  # 2 datasets x 2 symbols x 3 windows
    for name, old_path in old_files.items():
        old_table, new_table = pq.read_table(old_path), pq.read_table(new_files[name])
        assert new_table.to_pylist() == old_table.to_pylist(), name
        assert new_table.schema.metadata == old_table.schema.metadata, name
    trades = pq.read_table(
        tmp_path / "new/warm/trade/venue=synthetic/symbol=BTC-USD/date=2025-09-01/hour=00"
    )
    assert {"eu", "us"} <= set(trades.column("origin").to_pylist())  # the switch mattered
    journal.close()


async def test_each_journal_byte_is_read_once_and_the_position_is_durable(
    tmp_path: Path,
) -> None:
    """A round stages only records it has not read before; the read position is saved, so
    a new sealer over the same root continues from it instead of the journal's start;
    open-window rows are staged on disk under ``_state/staging`` until the window closes;
    status counts the rows staged since start."""
    journal = open_journal(tmp_path / "journal")
    seqs: dict[str, int] = {}
    first = write_events(journal, T0, T0 + 60 * S, seqs)
    one = sealer(tmp_path / "root", journal, auth=authority())
    result = await one.round(T0 + 60 * S)
    assert result.rows_staged == first
    assert result.read_through == journal.position()
    staging = tmp_path / "root/_state/staging/eu"
    assert list(staging.rglob("*.arrow"))
    again = await one.round(T0 + 61 * S)
    assert again.rows_staged == 0
    assert one.status()["rows_staged"] == first  # the running total status shows
    more = write_events(journal, T0 + 60 * S, T0 + 90 * S, seqs)
    reborn = sealer(tmp_path / "root", journal, auth=authority())
    assert reborn.read_through == result.read_through
    assert (await reborn.round(T0 + 90 * S)).rows_staged == more
    closed = await reborn.round(T0 + WINDOW + 31 * S)
    assert closed.windows_sealed == [T0]
    assert not list(staging.rglob("*.arrow"))  # dropped once the seal is saved
    journal.close()


CHILD = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tests.unit.test_hot_streaming_sealer import authority, open_journal, sealer
journal = open_journal(Path({journal!r}))
asyncio.run(sealer(Path({root!r}), journal, auth=authority()).round({now}))
"""


def run_child_until_failpoint(tmp_path: Path, failpoint: str, now: int) -> None:
    """Run one round in a child process with ``failpoint`` armed: it must die there."""
    code = CHILD.format(
        tests=str(Path(__file__).parents[2]),
        journal=str(tmp_path / "journal"),
        root=str(tmp_path / "root"),
        now=now,
    )
    env = {**os.environ, ENV_VAR: f"{failpoint}=exit"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == EXIT_CODE, proc.stderr.decode()
    assert f"failpoint {failpoint}: exit" in proc.stderr.decode()


def sealed_rows(root: Path) -> dict[str, list[str]]:
    found = {}
    for name, path in sorted(data_files(root).items()):
        found[name] = [
            json.dumps(r, sort_keys=True, default=str) for r in pq.read_table(path).to_pylist()
        ]
    return found


async def test_kill_after_staging_an_open_window_converges_to_the_clean_seal(
    tmp_path: Path,
) -> None:
    """A process killed (fail point ``stage.after_batch``, ``os._exit``) after staging an
    open window's rows but before saving its read position leaves staged files the saved
    position does not cover. More records arrive before the restart, so the redo reads a
    longer range (its staged file has another name); the restarted sealer drops the dead
    round's files and stages those bytes once, and the window seals to exactly the clean
    run's files: no row twice (books have no id to deduplicate by), none lost."""
    clean_dir, crash_dir = tmp_path / "clean", tmp_path / "crash"
    seqs: dict[str, dict[str, int]] = {"clean": {}, "crash": {}}
    for name, directory in (("clean", clean_dir), ("crash", crash_dir)):
        journal = open_journal(directory / "journal")
        write_events(journal, T0, T0 + 120 * S, seqs[name])
        journal.close()
    # Clean: stage mid-window, more records, then seal after the close.
    journal = open_journal(clean_dir / "journal")
    clean = sealer(clean_dir / "root", journal, auth=authority())
    await clean.round(T0 + 120 * S)
    write_events(journal, T0 + 120 * S, T0 + 180 * S, seqs["clean"])
    await clean.round(T0 + WINDOW + 31 * S)
    journal.close()
    # Crash: the child dies after staging, before the position is saved.
    run_child_until_failpoint(crash_dir, "stage.after_batch", T0 + 120 * S)
    assert list((crash_dir / "root/_state/staging").rglob("*.arrow"))
    assert not (crash_dir / "root/_state/hot/sealer.json").exists()
    journal = open_journal(crash_dir / "journal")
    write_events(journal, T0 + 120 * S, T0 + 180 * S, seqs["crash"])
    restarted = sealer(crash_dir / "root", journal, auth=authority())
    await restarted.round(T0 + WINDOW + 31 * S)
    journal.close()
    assert sealed_rows(crash_dir / "root") == sealed_rows(clean_dir / "root")
    assert sealed_rows(clean_dir / "root")


async def test_a_replica_trims_each_segment_once_replication_covers_its_windows(
    tmp_path: Path,
) -> None:
    """With 10-minute windows, a replica deletes the journal segments whose records all
    belong to windows the primary's replicated seals cover, while the segments holding a
    window that is not replicated yet stay (the previous sealer kept every segment)."""
    root = tmp_path / "root"  # the primary's seals, as warm replication delivers them
    primary_journal = open_journal(tmp_path / "primary")
    replica_journal = open_journal(tmp_path / "replica")
    for journal in (primary_journal, replica_journal):
        write_events(journal, T0, T0 + 2 * WINDOW, {})
    primary = sealer(root, primary_journal, auth=authority())
    replica = sealer(root, replica_journal, auth=authority(), primary=False)
    assert (await primary.round(T0 + WINDOW + 31 * S)).windows_sealed == [T0]
    before = [s.index for s in replica_journal.segments()]
    result = await replica.round(T0 + 2 * WINDOW + 31 * S)  # both closed, one replicated
    assert result.windows_sealed == [T0]
    assert result.deletable_segments
    kept = [s.index for s in replica_journal.segments()]
    assert set(kept) == set(before) - set(result.deletable_segments)
    # Every kept segment still holds a record of the window that is not replicated yet
    # (or is the active one).
    for segment in replica_journal.segments()[:-1]:
        assert T0 + WINDOW in replica.segment_windows[segment.index]
    await primary.round(T0 + 2 * WINDOW + 31 * S)
    again = await replica.round(T0 + 2 * WINDOW + 32 * S)
    assert again.windows_sealed == [T0 + WINDOW]
    assert [s.index for s in replica_journal.segments()] == [replica_journal.segments()[-1].index]
    primary_journal.close()
    replica_journal.close()


async def test_a_state_saved_before_streaming_is_read_from_the_journal_start(
    tmp_path: Path,
) -> None:
    """After an upgrade, a sealer state without a read position (the previous format)
    makes the sealer read the journal from its start: the open window's rows, which the
    previous sealer never staged, are sealed in full, and rows of windows it had sealed
    are neither sealed again nor taken as late."""
    journal = open_journal(tmp_path / "journal")
    lines: list[bytes] = []
    write_events(journal, T0, T0 + WINDOW + 120 * S, {}, lines)
    one = sealer(tmp_path / "root", journal, auth=authority())
    await one.round(T0 + WINDOW + 31 * S)  # window 0 sealed, window 1 staged
    state = json.loads(one.state_path.read_text())
    old = {k: state[k] for k in ("sealed", "late_through", "late_total")}
    one.state_path.write_text(json.dumps(old))
    for path in (tmp_path / "root/_state/staging").rglob("*.arrow"):
        path.unlink()  # the previous sealer had no staging
    upgraded = sealer(tmp_path / "root", journal, auth=authority())
    assert upgraded.read_through == (0, 0)
    result = await upgraded.round(T0 + 2 * WINDOW + 31 * S)
    assert result.windows_sealed == [T0 + WINDOW]
    assert result.late_rows == 0
    reference = tmp_path / "reference"
    old_sealer_files(lines, reference, authority(), until=T0 + 2 * WINDOW)
    assert sealed_rows(tmp_path / "root") == sealed_rows(reference)
    journal.close()


async def test_a_journal_that_ends_before_the_read_position_fails_the_round_loudly(
    tmp_path: Path,
) -> None:
    """When the journal holds fewer bytes than the sealer has read (it was replaced), a
    round fails with a StorageError naming both positions instead of silently skipping
    every record appended until the journal grows past the old position."""
    journal = open_journal(tmp_path / "journal")
    write_events(journal, T0, T0 + 30 * S, {})
    one = sealer(tmp_path / "root", journal, auth=authority())
    await one.round(T0 + 30 * S)
    journal.close()
    state = json.loads(one.state_path.read_text())
    state["read_through"] = [state["read_through"][0] + 5, 0]
    one.state_path.write_text(json.dumps(state))
    journal = open_journal(tmp_path / "journal")
    reborn = sealer(tmp_path / "root", journal, auth=authority())
    with pytest.raises(StorageError, match="before the sealer's read position"):
        await reborn.round(T0 + 40 * S)
    journal.close()


def _small_chunks(path: Path, start: int, stop: int | None) -> Any:
    """The sealer's journal chunks, 4 KiB at a time (many chunks from a small journal)."""
    from cryptorun_daemon.hot.journal_columns import iter_chunks

    return iter_chunks(path, start, stop, chunk_bytes=4096)


async def test_a_cancelled_round_stops_its_thread_early_and_the_next_round_redoes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling the task awaiting a round (daemon shutdown) stops its worker thread at
    the next staged batch instead of letting it read the rest of the journal (a stopping
    daemon waits for that thread); nothing of the round is saved, and the next round
    stages every record and seals what a sealer that was never cancelled seals."""
    import asyncio
    import threading

    from cryptorun_daemon.hot import sealer as sealer_module

    monkeypatch.setattr(sealer_module, "BATCH_ROWS", 100)
    monkeypatch.setattr(sealer_module, "iter_chunks", _small_chunks)
    journal = open_journal(tmp_path / "journal")
    seqs: dict[str, int] = {}
    total = write_events(journal, T0, T0 + WINDOW + 60 * S, seqs)
    clean_journal = open_journal(tmp_path / "clean-journal")
    write_events(clean_journal, T0, T0 + WINDOW + 60 * S, {})
    one = sealer(tmp_path / "root", journal, auth=authority())
    before = one.read_through
    staged_batches: list[int] = []
    real_stage, real_stage_tables = one.staging.stage, one.staging.stage_tables
    first_batch_staged = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stage(*args: Any, tables: bool = False) -> int:
        staged_batches.append(1)
        count = real_stage_tables(*args) if tables else real_stage(*args)
        loop.call_soon_threadsafe(first_batch_staged.set)
        if len(staged_batches) == 1:
            # Hold the thread until the cancellation has reached the sealer.
            for _ in range(1000):
                if one._abort.is_set():
                    break
                threading.Event().wait(0.01)
        return count

    monkeypatch.setattr(one.staging, "stage", stage)
    monkeypatch.setattr(one.staging, "stage_tables", lambda *a: stage(*a, tables=True))
    task = asyncio.create_task(one.round(T0 + WINDOW + 31 * S))
    await first_batch_staged.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with one._round_lock:  # the cancelled round's thread has ended
        pass
    assert len(staged_batches) == 1  # stopped after its first batch, not total / 100
    assert total > 10 * 100
    assert one.read_through == before  # nothing of the cancelled round was saved
    monkeypatch.setattr(one.staging, "stage", real_stage)
    monkeypatch.setattr(one.staging, "stage_tables", real_stage_tables)
    redone = await one.round(T0 + WINDOW + 31 * S)
    assert redone.windows_sealed == [T0]
    clean = sealer(tmp_path / "clean", clean_journal, auth=authority())
    await clean.round(T0 + WINDOW + 31 * S)
    assert sealed_rows(tmp_path / "root") == sealed_rows(tmp_path / "clean")
    journal.close()
    clean_journal.close()


async def test_a_sealer_behind_catches_up_in_bounded_rounds_that_save_their_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sealer with a long backlog reads at most ROUND_BYTES per round and saves how far
    it got (a stop loses at most one round's work); it seals a closed window only in the
    round that reaches the journal's end, and the partitions it seals then equal those
    of a sealer that read the whole backlog in one round."""
    from cryptorun_daemon.hot import sealer as sealer_module

    monkeypatch.setattr(sealer_module, "iter_chunks", _small_chunks)
    monkeypatch.setattr(sealer_module, "ROUND_BYTES", 64 << 10)
    journal = open_journal(tmp_path / "journal")
    write_events(journal, T0, T0 + WINDOW + 60 * S, {})
    clean_journal = open_journal(tmp_path / "clean-journal")
    write_events(clean_journal, T0, T0 + WINDOW + 60 * S, {})
    behind = sealer(tmp_path / "root", journal, auth=authority())
    now = T0 + WINDOW + 31 * S  # the first window is closed
    positions = []
    while True:
        result = await behind.round(now)
        positions.append(result.read_through)
        reborn = sealer(tmp_path / "root", journal, auth=authority())
        assert reborn.read_through == result.read_through  # saved every round
        if result.caught_up:
            break
        assert result.windows_sealed == []
        assert len(positions) < 100
    assert len(positions) > 2
    assert positions == sorted(positions)
    assert result.windows_sealed == [T0]
    assert result.read_through == journal.position()
    monkeypatch.setattr(sealer_module, "ROUND_BYTES", 1 << 40)
    clean = sealer(tmp_path / "clean", clean_journal, auth=authority())
    assert (await clean.round(now)).windows_sealed == [T0]
    assert sealed_rows(tmp_path / "root") == sealed_rows(tmp_path / "clean")
    journal.close()
    clean_journal.close()
