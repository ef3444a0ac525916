"""The primary validates what it seals, as every replica validates what it pulls.

Regression for the chaos soak (seed 2026, `warm.identical`): records stamped in
the future by the exchange (a clock jump) were sealed by the primary without a
sidecar, while every replica that pulled the same bytes listed those rows as
`clock_drift` in its `_quarantine.json` — readers at the primary read rows that
readers everywhere else dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptorun_daemon.config.model import ValidationConfig
from cryptorun_daemon.data.validate import SIDECAR_NAME, partition_validator, quarantined_rows
from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.hot.sealer import HotSealer
from cryptorun_daemon.metrics import Metrics

S = 1_000_000_000
HOUR = 3600 * S
T0 = 1_756_684_800 * S  # 2025-09-01T00:00:00Z
PARTITION = "warm/trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00"


def trade(ts: int, trade_id: int, *, ahead: int = 0) -> MarketRecord:
    """A trade received 1 µs after its exchange time, or ``ahead`` ns before it."""
    return MarketRecord(
        "trade",
        {
            "ts": ts,
            "venue": "kraken",
            "symbol": "BTC/USD",
            "side": "buy",
            "price": 100.0,
            "qty": 1.0,
            "trade_id": trade_id,
            "ingest_ts": ts - ahead if ahead else ts + 1000,
        },
    )


def primary(tmp_path: Path) -> tuple[HotLog, HotSealer, Metrics, Path]:
    metrics = Metrics()
    root = tmp_path / "root"
    journal = Journal(
        tmp_path / "journal", segment_bytes=1 << 20, fsync_interval=1, fsync_records=1000
    )
    log = HotLog("eu", journal, ReplayBuffer(1000, 1 << 20), metrics)
    log.open()
    checks = partition_validator(
        region="eu", config=ValidationConfig(), metrics=metrics, storage_root=root, strict=False
    )
    sealer = HotSealer(
        region="eu",
        root=root,
        journal=journal,
        authority=SourceAuthority("eu", ["eu"], gate_seconds=5, metrics=metrics),
        partition_length=3600,
        seal_grace=30,
        is_warm_primary=lambda: True,
        epoch=lambda: 1,
        metrics=metrics,
        validate=checks,
    )
    return log, sealer, metrics, root


async def test_rows_from_the_future_are_listed_in_the_primarys_sidecar(tmp_path: Path) -> None:
    """Three trades stamped 5 s after they were received are sealed (bytes kept) and listed
    as clock_drift in the sidecar beside the window file, counted for tier warm at the
    primary; the same file checked by a replica's validator gives the same rows."""
    log, sealer, metrics, root = primary(tmp_path)
    for i in range(1, 21):
        log.append_local(trade(T0 + i * S, i, ahead=5 * S if i in (7, 8, 9) else 0))
    result = await sealer.round(T0 + HOUR + 31 * S)
    assert result.windows_sealed == [T0]
    folder = root / PARTITION
    manifest = json.loads((folder / "_manifest.json").read_text())
    (name,) = [entry["name"] for entry in manifest["files"]]
    sidecar = json.loads((folder / SIDECAR_NAME).read_text())
    entry = sidecar["files"][name]
    assert entry["flagged_rows"] == 3
    assert [(f["check"], f["reason"]) for f in entry["findings"]] == [("drift", "clock_drift")]
    flagged = quarantined_rows(folder / name).tolist()
    assert len(flagged) == 3
    labels = {"check": "drift", "tier": "warm", "region": "eu"}
    assert metrics.registry.get_sample_value("cryptorun_validation_errors_total", labels) == 3
    # A replica pulling these bytes validates them itself: same rows.
    replica_root = tmp_path / "replica"
    copy = replica_root / PARTITION / name
    copy.parent.mkdir(parents=True)
    copy.write_bytes((folder / name).read_bytes())
    replica_check = partition_validator(
        region="us", config=ValidationConfig(), metrics=Metrics(), storage_root=replica_root
    )
    assert replica_check(copy, "trade", "warm").ok
    assert quarantined_rows(copy).tolist() == flagged


async def test_clean_windows_get_no_sidecar(tmp_path: Path) -> None:
    """Nothing flagged, nothing written beside the data."""
    log, sealer, _, root = primary(tmp_path)
    for i in range(1, 21):
        log.append_local(trade(T0 + i * S, i))
    await sealer.round(T0 + HOUR + 31 * S)
    assert (root / PARTITION / "_SUCCESS").is_file()
    assert not (root / PARTITION / SIDECAR_NAME).exists()
