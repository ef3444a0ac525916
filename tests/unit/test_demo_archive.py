"""The demo's cold archiver (``cryptorun demo --object-store``): what it writes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from cryptorun_daemon.data.validate.schema import arrow_schema
from cryptorun_daemon.demo.archive import FILE_NAME, simulated_day, write_archive
from cryptorun_daemon.storage.layout import SUCCESS_MARKER
from cryptorun_daemon.storage.seal import seal_partition

DAY = date(2025, 9, 1)


def test_the_archived_day_holds_only_trades_stamped_inside_it() -> None:
    """Point in time: every archived trade's exchange time lies in [day, day + 1 day), none at
    or after the window's end, and trade ids strictly increase (the simulator's tape)."""
    start = int(datetime(2025, 9, 1, tzinfo=UTC).timestamp() * 1e9)
    end = start + int(timedelta(days=1).total_seconds() * 1e9)
    rows = simulated_day(DAY, "BTC/USD", origin="eu-central")
    assert rows
    assert all(start <= row.fields["ts"] < end for row in rows)
    ids = [row.fields["trade_id"] for row in rows]
    assert ids == sorted(set(ids))


def test_write_archive_writes_trade_schema_files_and_keeps_a_sealed_day(tmp_path: Path) -> None:
    """One cold partition per symbol under ``cold/trade/venue=kraken/symbol=…/date=…`` in
    the trade schema; a partition already sealed there (a reused demo directory) is not
    rewritten."""
    keys = write_archive(tmp_path, DAY, ("BTC/USD", "ETH/USD"), origin="eu-central")
    assert [k.relpath for k in keys] == [
        "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01",
        "trade/venue=kraken/symbol=ETH-USD/date=2025-09-01",
    ]
    path = keys[0].directory(tmp_path) / FILE_NAME
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == arrow_schema("trade").remove_metadata()
    seal_partition(keys[0].directory(tmp_path), writer_region="eu-central", epoch=1)
    before = path.stat().st_mtime_ns
    write_archive(tmp_path, DAY, ("BTC/USD",), origin="eu-central")
    assert (keys[0].directory(tmp_path) / SUCCESS_MARKER).is_file()
    assert path.stat().st_mtime_ns == before
