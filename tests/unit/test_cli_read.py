"""``cryptorun read``: every output format round-trips what the library returns."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cryptorun_daemon.cli.cmd_read import run_read
from cryptorun_daemon.cli.main import main
from cryptorun_daemon.reader import METADATA_KEY, open_store
from tests.harness.daemons import two_regions
from tests.harness.research_data import at, flag_rows, key, write_part

START, END = "2025-09-01T00:00:00Z", "2025-09-01T04:00:00Z"


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    """Three sealed hours of 4 rows (row 1 of hour 00 flagged) and one unsealed hour."""
    root = tmp_path / "root"
    for hour in range(3):
        directory = write_part(root, key("warm", hour=hour), 4, first=hour * 10)
        if hour == 0:
            flag_rows(directory, "part-0000.parquet", [("anomaly", "spike", [(1, 2)])], rows=4)
    write_part(root, key("warm", hour=3), 4, first=30, seal=False)
    return root


def read_cli(root: Path, *extra: str, out: io.StringIO | None = None) -> int:
    argv = ["read", "trade", "--root", str(root), "--start", START, "--end", END, *extra]
    return main(argv, out=out if out is not None else io.StringIO())


def expected(root: Path, **options: object) -> pa.Table:
    table = open_store(root).read("trade", at(0), at(4), **options)
    return table.replace_schema_metadata(None)


def test_parquet_output_round_trips_with_provenance(store_root: Path, tmp_path: Path) -> None:
    """--format parquet -o FILE writes exactly the library's rows, provenance in the schema."""
    target = tmp_path / "out.parquet"
    assert read_cli(store_root, "--format", "parquet", "-o", str(target)) == 0
    written = pq.read_table(target)
    assert METADATA_KEY in written.schema.metadata
    assert written.replace_schema_metadata(None).equals(expected(store_root))
    assert written.num_rows == 11


def test_arrow_output_round_trips(store_root: Path, tmp_path: Path) -> None:
    """--format arrow writes an Arrow IPC file equal to the library's table."""
    target = tmp_path / "out.arrow"
    assert read_cli(store_root, "--format", "arrow", "-o", str(target), "--quarantine", "keep") == 0
    with pa.ipc.open_file(target) as reader:
        written = reader.read_all()
    assert written.replace_schema_metadata(None).equals(expected(store_root, quarantine="keep"))


def test_csv_output_round_trips_to_stdout(store_root: Path) -> None:
    """--format csv without -o prints CSV whose rows and symbols match the library's."""
    out = io.StringIO()
    assert (
        read_cli(
            store_root, "--format", "csv", "--column", "trade_id", "--column", "symbol", out=out
        )
        == 0
    )
    parsed = pacsv.read_csv(io.BytesIO(out.getvalue().encode()))
    want = expected(store_root, columns=["trade_id", "symbol"])
    assert parsed.column("trade_id").to_pylist() == want.column("trade_id").to_pylist()
    assert set(parsed.column("symbol").to_pylist()) == {"BTC-USD"}


def test_table_output_and_summary(store_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--format table shows the first rows; stderr gets partitions, tiers, rows and drops."""
    out = io.StringIO()
    assert read_cli(store_root, "--format", "table", "--limit", "3", out=out) == 0
    text = out.getvalue()
    assert "TRADE_ID" in text
    assert "BTC-USD" in text
    assert "8 more rows" in text
    summary = capsys.readouterr().err
    assert "read 3 partitions (warm 3) in 3 files" in summary
    assert "12 rows read" in summary
    assert "1 dropped (quarantine=drop, 1 flagged)" in summary
    assert "1 unsealed skipped" in summary


def test_bad_requests_exit_2_with_a_reason(
    store_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reversed window, a hostile symbol or no root are usage errors (exit 2)."""
    argv = ["read", "trade", "--root", str(store_root), "--format", "table"]
    assert main([*argv, "--start", END, "--end", START], out=io.StringIO()) == 2
    assert "empty or reversed" in capsys.readouterr().err
    assert main([*argv, "--start", START, "--end", END, "--symbol", "../x"], out=io.StringIO()) == 2
    assert "symbol" in capsys.readouterr().err
    missing = ["read", "trade", "--root", str(store_root / "nope"), "--format", "csv"]
    assert main([*missing, "--start", START, "--end", END], out=io.StringIO()) == 2


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the progress bar is drawn."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_none_when_piped(store_root: Path) -> None:
    """A terminal's stderr gets a bar that reaches every file; a pipe gets the summary only."""
    values = {"start": [START], "end": [END]}
    common: dict[str, Any] = {"root": str(store_root), "config": None, "values": values}
    terminal = _Terminal()
    assert run_read("trade", **common, output_format="csv", output=None, limit=5,
                    progress=True, out=io.StringIO(), err=terminal) == 0  # fmt: skip
    assert "] 3/3 files" in terminal.getvalue()
    assert terminal.getvalue().splitlines()[-1].startswith("read 3 partitions")
    piped = io.StringIO()
    assert run_read("trade", **common, output_format="csv", output=None, limit=5,
                    progress=True, out=io.StringIO(), err=piped) == 0  # fmt: skip
    assert "files" in piped.getvalue()
    assert "[" not in piped.getvalue()


def test_config_gives_the_storage_root(tmp_path: Path) -> None:
    """--config PATH reads the region's storage.root; --root and --config together are refused."""
    spec, _ = two_regions(tmp_path)
    write_part(spec.storage_root, key("warm", hour=0), 4)
    config = spec.write()
    out = io.StringIO()
    argv = ["read", "trade", "--start", START, "--end", END, "--format", "csv"]
    assert main([*argv, "--config", str(config), "--column", "trade_id"], out=out) == 0
    assert out.getvalue().split() == ['"trade_id"', "0", "1", "2", "3"]
    both = [*argv, "--config", str(config), "--root", str(spec.storage_root)]
    assert main(both, out=io.StringIO()) == 2
