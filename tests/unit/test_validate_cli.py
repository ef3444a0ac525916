"""run_validate: offline inspection of partitions, summaries, JSON output and exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.data.validate import arrow_schema, run_validate

T0 = 1_756_684_800_000_000_000
S = 1_000_000_000


def write(folder: Path, n: int = 20, stale_rows: tuple[int, ...] = (), skew: int = 120 * S) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data: list[dict[str, Any]] = [
        {
            "ts": T0 + i * S,
            "venue": "kraken",
            "symbol": "BTC/USD",
            "side": "sell",
            "price": 100.0,
            "qty": 1.0,
            "trade_id": i,
            "ingest_ts": T0 + i * S + (skew if i in stale_rows else 0),
            "origin": "eu-central",
            "seq": i,
        }
        for i in range(n)
    ]
    path = folder / "part-000.parquet"
    pq.write_table(pa.Table.from_pylist(data, schema=arrow_schema("trade")), path)
    return path


def partition(root: Path) -> Path:
    return root / "warm" / "trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00"


def test_clean_partition_exits_zero(tmp_path: Path) -> None:
    """A clean partition folder prints a summary with zero findings and exits 0."""
    write(partition(tmp_path))
    out = io.StringIO()
    assert run_validate([str(tmp_path / "warm")], tier="warm", as_json=False, out=out) == 0
    text = out.getvalue()
    assert "offline inspection" in text
    assert "nothing was moved" in text
    assert "staleness  0" in text


def test_findings_exit_one_and_show_first_rows(tmp_path: Path) -> None:
    """Stale rows make exit code 1; the human table lists the offending row numbers."""
    path = write(partition(tmp_path), stale_rows=(4, 9))
    before = path.read_bytes()
    out = io.StringIO()
    assert run_validate([str(path)], tier="warm", as_json=False, out=out) == 1
    text = out.getvalue()
    assert "staleness  2" in text
    assert "        4  staleness" in text
    assert "        9  staleness" in text
    assert path.read_bytes() == before
    assert not list(tmp_path.rglob("_quarantine*"))  # offline: nothing written


def test_json_output_is_one_document(tmp_path: Path) -> None:
    """--json prints one JSON document with per-check summary and offending rows."""
    write(partition(tmp_path), stale_rows=(2,))
    out = io.StringIO()
    code = run_validate([str(tmp_path)], tier="warm", as_json=True, out=out)
    document = json.loads(out.getvalue())
    assert code == document["exit_code"] == 1
    assert document["offline"] is True
    assert document["summary"]["staleness"] == 1
    (entry,) = document["files"]
    assert entry["dataset"] == "trade"
    assert entry["status"] == "findings"
    assert entry["first_offending_rows"][0]["row"] == 2


def test_tier_threshold_applies(tmp_path: Path) -> None:
    """A 10 s skew is stale under the hot threshold (5 s) and fine under warm (60 s)."""
    path = write(partition(tmp_path), stale_rows=(3,), skew=10 * S)
    assert run_validate([str(path)], tier="hot", as_json=False, out=io.StringIO()) == 1
    assert run_validate([str(path)], tier="warm", as_json=False, out=io.StringIO()) == 0


def test_missing_path_exits_two_with_message(tmp_path: Path) -> None:
    """A path that does not exist is reported clearly and the exit code is 2."""
    out = io.StringIO()
    code = run_validate([str(tmp_path / "nope")], tier="warm", as_json=False, out=out)
    assert code == 2
    assert "no such file or directory" in out.getvalue()


def test_unknown_tier_exits_two(tmp_path: Path) -> None:
    """An unknown tier is a usage error (exit 2)."""
    out = io.StringIO()
    assert run_validate([str(tmp_path)], tier="lukewarm", as_json=True, out=out) == 2
    assert "unknown tier" in json.loads(out.getvalue())["errors"][0]


def test_corrupt_and_wrong_schema_files_are_findings(tmp_path: Path) -> None:
    """An unreadable file and a file with the wrong columns are reported, exit 1, not moved."""
    corrupt = write(partition(tmp_path))
    corrupt.write_bytes(b"junk")
    other = partition(tmp_path).with_name("hour=01")
    other.mkdir(parents=True)
    pq.write_table(pa.table({"ts": [1]}), other / "part-000.parquet")
    out = io.StringIO()
    assert run_validate([str(tmp_path)], tier="warm", as_json=True, out=out) == 1
    document = json.loads(out.getvalue())
    assert document["summary"]["corrupt"] == 1
    assert document["summary"]["schema"] == 1
    assert corrupt.exists()
