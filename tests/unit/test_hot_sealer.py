"""Hot → warm sealing over a real journal, with time passed in explicitly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.hot.record import encode_record
from cryptorun_daemon.hot.sealer import HotSealer
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.reader import open_store
from cryptorun_daemon.timefmt import parse_rfc3339

S = 1_000_000_000
HOUR = 3600 * S
T0 = 1_756_684_800 * S  # 2025-09-01T00:00:00Z


def setup(tmp_path: Path, *, primary: bool = True) -> tuple[HotLog, HotSealer, Metrics]:
    metrics = Metrics()
    journal = Journal(
        tmp_path / "journal", segment_bytes=4096, fsync_interval=1, fsync_records=1000
    )
    log = HotLog("eu", journal, ReplayBuffer(1000, 1 << 20), metrics)
    log.open()
    authority = SourceAuthority("eu", ["eu", "us"], gate_seconds=5, metrics=metrics)
    sealer = HotSealer(
        region="eu",
        root=tmp_path / "root",
        journal=journal,
        authority=authority,
        partition_length=3600,
        seal_grace=30,
        is_warm_primary=lambda: primary,
        epoch=lambda: 3,
        metrics=metrics,
    )
    return log, sealer, metrics


def trade(ts: int, trade_id: int, price: float = 100.0) -> MarketRecord:
    return MarketRecord(
        "trade",
        {
            "ts": ts,
            "venue": "kraken",
            "symbol": "BTC/USD",
            "side": "buy",
            "price": price,
            "qty": 1.0,
            "trade_id": trade_id,
            "ingest_ts": ts + 1000,
        },
    )


def mirror(log: HotLog, seqs: range, trade_ids: list[int], ts: int) -> None:
    """Apply a peer's copies of the same trades as origin 'us'."""
    if log.position("us") is None:
        log.adopt_replid("us", "peer", 0)
    lines = [
        encode_record(
            "us",
            s,
            ts + 2000,
            "trade",
            {
                "ts": ts + i,
                "venue": "kraken",
                "symbol": "BTC/USD",
                "side": "buy",
                "price": 100.0,
                "qty": 1.0,
                "trade_id": tid,
                "ingest_ts": ts + 2000,
            },
        ).line
        for i, (s, tid) in enumerate(zip(seqs, trade_ids, strict=True))
    ]
    log.apply_mirrored("us", lines, seqs[-1], ts + 2000, [])


def trade_dir(root: Path) -> Path:
    return root / "warm/trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00"


async def test_closed_hour_is_sealed_with_trades_deduplicated(tmp_path: Path) -> None:
    """Local and mirrored copies of the same trades seal into one partition, each trade once,
    with the manifest naming the sources used and the worst freshness."""
    log, sealer, _ = setup(tmp_path)
    for i in range(1, 101):
        log.append_local(trade(T0 + i * S, i))
    mirror(log, range(1, 151), list(range(51, 201)), T0 + 5 * S)
    result = await sealer.round(T0 + HOUR + 31 * S)
    assert result.windows_sealed == [T0]
    directory = trade_dir(tmp_path / "root")
    assert (directory / "_SUCCESS").is_file()
    ids = pq.read_table(directory).column("trade_id").to_pylist()
    assert sorted(ids) == list(range(1, 201))
    manifest = json.loads((directory / "_manifest.json").read_text())
    assert manifest["epoch"] == 3
    assert manifest["writer_region"] == "eu"
    assert {s["source"] for s in manifest["sources"]} == {"eu", "us"}
    assert manifest["worst_freshness_seconds"] >= 1.0


async def test_open_hour_is_not_sealed_before_grace(tmp_path: Path) -> None:
    """A window is sealed only partition_length + seal_grace after its start."""
    log, sealer, _ = setup(tmp_path)
    log.append_local(trade(T0 + S, 1))
    result = await sealer.round(T0 + HOUR + 29 * S)
    assert result.windows_sealed == []
    assert not trade_dir(tmp_path / "root").exists()


async def test_late_records_go_to_a_late_fill_file_and_are_counted(tmp_path: Path) -> None:
    """Records for a sealed hour are written in the next round's late-fill file, never dropped;
    a late copy of an already sealed trade is a duplicate, not a late record."""
    log, sealer, metrics = setup(tmp_path)
    for i in range(1, 11):
        log.append_local(trade(T0 + i * S, i))
    await sealer.round(T0 + HOUR + 31 * S)
    log.append_local(trade(T0 + 20 * S, 20))
    log.append_local(trade(T0 + 5 * S, 5))  # duplicate of a sealed trade
    log.append_local(trade(T0 + HOUR + 5 * S, 99))  # next hour, still open
    result = await sealer.round(T0 + HOUR + 40 * S)
    assert result.late_rows == 1
    directory = trade_dir(tmp_path / "root")
    late = list(directory.glob("late-fill-*.parquet"))
    assert len(late) == 1
    assert pq.read_table(late[0]).column("trade_id").to_pylist() == [20]
    assert (directory / "_SUCCESS").is_file()
    assert (
        metrics.registry.get_sample_value("cryptorun_hot_late_records_total", {"region": "eu"}) == 1
    )
    again = await sealer.round(T0 + HOUR + 50 * S)
    assert again.late_rows == 0  # each late record is filled exactly once


async def test_a_late_fill_keeps_the_version_it_replaces_for_as_of_reads(tmp_path: Path) -> None:
    """A late fill re-seals a sealed hour; the manifest it replaces is kept under
    ``_superseded/``, so a research read "as of" before the fill sees the first seal."""
    log, sealer, _ = setup(tmp_path)
    for i in range(1, 11):
        log.append_local(trade(T0 + i * S, i))
    await sealer.round(T0 + HOUR + 31 * S)
    root = tmp_path / "root"
    first = json.loads((trade_dir(root) / "_manifest.json").read_text())
    log.append_local(trade(T0 + 20 * S, 20))
    await sealer.round(T0 + HOUR + 40 * S)
    kept = list((root / "_superseded/warm").rglob("_manifest.json"))
    assert [json.loads(p.read_text())["content_hash"] for p in kept] == [first["content_hash"]]
    store = open_store(root)
    start = datetime.fromtimestamp(T0 // S, UTC)
    end = start + timedelta(hours=1)
    before = store.read(
        "trade", start, end, tiers=("warm",), as_of=parse_rfc3339(first["sealed_at"])
    )
    now = store.read("trade", start, end, tiers=("warm",))
    assert sorted(before.column("trade_id").to_pylist()) == list(range(1, 11))
    assert sorted(now.column("trade_id").to_pylist()) == [*range(1, 11), 20]


async def test_fully_sealed_segments_are_deleted_and_others_kept(tmp_path: Path) -> None:
    """Only segments whose every record is in a sealed window are deleted."""
    log, sealer, _ = setup(tmp_path)
    for i in range(1, 200):
        log.append_local(trade(T0 + i * S, i))
    for i in range(1, 5):
        log.append_local(trade(T0 + HOUR + i * S, 1000 + i))
    before = [s.index for s in log.journal.segments()]
    result = await sealer.round(T0 + HOUR + 31 * S)
    assert result.deletable_segments
    after = [s.index for s in log.journal.segments()]
    assert set(after) == set(before) - set(result.deletable_segments)
    assert log.journal.segments()[-1].active


async def test_replica_writes_nothing_and_keeps_its_journal(tmp_path: Path) -> None:
    """A region that is not warm primary never writes partitions or deletes unreplicated data."""
    log, sealer, _ = setup(tmp_path, primary=False)
    for i in range(1, 200):
        log.append_local(trade(T0 + i * S, i))
    result = await sealer.round(T0 + HOUR + 31 * S)
    assert result.windows_sealed == []
    assert result.deletable_segments == []
    assert not (tmp_path / "root" / "warm").exists()


async def test_sealer_state_survives_restart(tmp_path: Path) -> None:
    """A new sealer over the same root remembers sealed windows and does not re-seal them."""
    log, sealer, _ = setup(tmp_path)
    log.append_local(trade(T0 + S, 1))
    await sealer.round(T0 + HOUR + 31 * S)
    reborn = HotSealer(
        region="eu",
        root=tmp_path / "root",
        journal=log.journal,
        authority=sealer.authority,
        partition_length=3600,
        seal_grace=30,
        is_warm_primary=lambda: True,
        epoch=lambda: 3,
        metrics=Metrics(),
    )
    result = await reborn.round(T0 + HOUR + 60 * S)
    assert result.windows_sealed == []
    assert result.late_rows == 0


def sealer_on(
    root: Path, log: HotLog, *, primary: bool, partition_length: float = 3600
) -> HotSealer:
    """A sealer over ``log``'s journal that writes into (or, as replica, checks) ``root``."""
    metrics = Metrics()
    return HotSealer(
        region="eu" if primary else "us",
        root=root,
        journal=log.journal,
        authority=SourceAuthority("eu", ["eu", "us"], gate_seconds=5, metrics=metrics),
        partition_length=partition_length,
        seal_grace=30,
        is_warm_primary=lambda: primary,
        epoch=lambda: 3,
        metrics=metrics,
    )


async def test_replica_tracks_each_sub_hour_window_on_its_own(tmp_path: Path) -> None:
    """With 10-minute windows, a replica does not take the second window of an hour as
    sealed because the hour partition was sealed for the first: it keeps that window's
    journal until the primary's seal listing that window's own file has arrived."""
    root = tmp_path / "root"  # the primary's seals, as warm replication delivers them
    primary_log, _, _ = setup(tmp_path / "primary")
    replica_log, _, _ = setup(tmp_path / "replica")
    for log in (primary_log, replica_log):
        for i in range(1, 40):
            log.append_local(trade(T0 + i * 30 * S, i))  # 00:00:30 .. 00:19:30
    primary = sealer_on(root, primary_log, primary=True, partition_length=600)
    replica = sealer_on(root, replica_log, primary=False, partition_length=600)
    first = await primary.round(T0 + 600 * S + 31 * S)  # only 00:00-00:10 is closed
    assert first.windows_sealed == [T0]
    assert (trade_dir(root) / "_SUCCESS").is_file()

    result = await replica.round(T0 + 1200 * S + 31 * S)  # both windows closed
    assert result.windows_sealed == [T0]
    assert result.deletable_segments == []
    assert T0 + 600 * S not in replica.sealed

    await primary.round(T0 + 1200 * S + 31 * S)
    again = await replica.round(T0 + 1200 * S + 32 * S)
    assert again.windows_sealed == [T0 + 600 * S]


async def test_a_seal_redone_after_a_crash_counts_each_row_once(tmp_path: Path) -> None:
    """When the process died after sealing a window but before saving the sealer state,
    the restarted sealer seals the window again from the journal (now with one more record):
    the manifest's source rows equal the rows in the files, nothing is counted twice."""
    log, sealer, _ = setup(tmp_path)
    for i in range(1, 11):
        log.append_local(trade(T0 + i * S, i))
    await sealer.round(T0 + HOUR + 31 * S)
    sealer.state_path.unlink()  # the crash: the seal is on disk, the state is not
    log.append_local(trade(T0 + 20 * S, 20))
    reborn = sealer_on(tmp_path / "root", log, primary=True)
    result = await reborn.round(T0 + HOUR + 40 * S)
    assert result.windows_sealed == [T0]
    directory = trade_dir(tmp_path / "root")
    assert (directory / "_SUCCESS").is_file()
    manifest = json.loads((directory / "_manifest.json").read_text())
    assert manifest["rows"] == 11
    assert [(s["source"], s["rows"], s["late_rows"]) for s in manifest["sources"]] == [
        ("eu", 11, 0)
    ]


async def test_a_record_older_than_the_state_keeps_is_late_not_a_new_seal(tmp_path: Path) -> None:
    """A record for a window the sealer state no longer remembers (sealed more than a week
    ago) goes to a late-fill file; the window's sealed file keeps its rows."""
    log, sealer, _ = setup(tmp_path)
    for i in range(1, 6):
        log.append_local(trade(T0 + i * S, i))
    await sealer.round(T0 + HOUR + 31 * S)
    await sealer.round(T0 + 8 * 24 * HOUR)  # a week later: the window leaves the state
    assert T0 not in sealer.sealed
    log.append_local(trade(T0 + 30 * S, 30))
    result = await sealer.round(T0 + 8 * 24 * HOUR + S)
    assert result.windows_sealed == []
    assert result.late_rows == 1
    directory = trade_dir(tmp_path / "root")
    assert sorted(pq.read_table(directory).column("trade_id").to_pylist()) == [1, 2, 3, 4, 5, 30]
