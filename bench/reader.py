"""Research reader benchmark: ``open_store(...).read`` vs a plain ``pyarrow.dataset`` read.

Generates one day of hourly warm trade partitions (default 24 x 420,000 =
10.08M rows, one file each, sealed), then in the same run, alternating and
best-of-N:

1. plain: ``pyarrow.dataset.dataset(<the same files>).to_table()`` — no
   sealing check, no point-in-time, no quarantine, no provenance;
2. ``store.read("trade", day, day + 1d)``: the reader with every rule on,
   against (1): target >= 0.9x;
3. the same with 0.1 % of each file's rows listed in ``_quarantine.json``
   (drop mode), against (1): target >= 0.8x;
4. ``store.batches(...)`` in a child process: peak Arrow memory and RSS
   while streaming the whole day, against the size of the full table.

Usage: ``python bench/reader.py [--rows-per-hour 420000] [--repeat 3] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptorun_daemon.data.validate.quarantine import write_sidecar  # noqa: E402
from cryptorun_daemon.reader import open_store  # noqa: E402
from tests.harness.testdata import seed_partitions  # noqa: E402

DAY = datetime(2025, 9, 1, tzinfo=UTC)
END = DAY + timedelta(days=1)


def build(root: Path, rows_per_hour: int) -> list[Path]:
    """24 sealed hourly partitions of one symbol; returns their data files."""
    folders = seed_partitions(root, start=DAY, count=24, rows=rows_per_hour)
    return [f / "part-0000.parquet" for f in folders]


def quarantine(files: list[Path], share: float, seed: int = 7) -> int:
    """List ``share`` of each file's rows (in runs of 10) as flagged; returns rows flagged."""
    rng = np.random.default_rng(seed)
    total = 0
    for path in files:
        rows = pq.read_metadata(path).num_rows
        runs = max(1, int(rows * share) // 10)
        starts = np.sort(rng.choice(rows // 10, size=runs, replace=False)) * 10
        ranges = [[int(s), int(s) + 10] for s in starts]
        total += 10 * runs
        write_sidecar(
            path,
            {
                "schema": "trade@1",
                "fingerprint": "bench",
                "tier": "warm",
                "region": "eu-central",
                "rows": rows,
                "flagged_rows": 10 * runs,
                "validated_at": "2025-09-02T00:00:00Z",
                "findings": [
                    {
                        "check": "anomaly",
                        "field": "price",
                        "reason": "bench",
                        "expected": "",
                        "count": 10 * runs,
                        "rows": ranges,
                        "examples": [],
                    }
                ],
            },
        )
    return total


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def compare(root: Path, files: list[Path], repeat: int) -> dict[str, Any]:
    """Best-of-``repeat`` seconds for the plain read and the reader, alternating."""
    store = open_store(root)
    plain_best = reader_best = float("inf")
    rows = (0, 0)
    for _ in range(repeat):
        seconds, table = timed(
            lambda: ds.dataset([str(f) for f in files], format="parquet").to_table()
        )
        plain_best = min(plain_best, seconds)
        plain_rows = table.num_rows
        del table
        seconds, table = timed(lambda: store.read("trade", DAY, END))
        reader_best = min(reader_best, seconds)
        rows = (plain_rows, table.num_rows)
        del table
    return {
        "plain_s": round(plain_best, 3),
        "reader_s": round(reader_best, 3),
        "ratio": round(plain_best / reader_best, 3),
        "plain_rows": rows[0],
        "reader_rows": rows[1],
    }


def stream_peak(root: Path) -> dict[str, Any]:
    """Run in a child process: stream the day with ``batches`` and report peak memory."""
    store = open_store(root)
    pool = pa.default_memory_pool()
    rss_before = _status_kb("VmRSS")
    peak_arrow = rows = batches = 0
    for batch in store.batches("trade", DAY, END):
        rows += batch.num_rows
        batches += 1
        peak_arrow = max(peak_arrow, pa.total_allocated_bytes())
    return {
        "rows": rows,
        "batches": batches,
        "peak_arrow_mb": round(max(peak_arrow, pool.max_memory() or 0) / 2**20, 1),
        "rss_before_mb": round(rss_before / 1024, 1),
        "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
    }


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in kB (VmRSS now, VmHWM peak of this process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows-per-hour", type=int, default=420_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to build the data (default: temp)")
    parser.add_argument("--stream-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_child:
        print(json.dumps(stream_peak(Path(args.stream_child))))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        seconds, files = timed(lambda: build(root, args.rows_per_hour))
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        rows = 24 * args.rows_per_hour
        print(f"built 24 hourly partitions, {rows:,} rows, {size_mb:.0f} MB in {seconds:.1f}s")
        clean = compare(root, files, args.repeat)
        print(
            f"clean: plain {clean['plain_s']}s  reader {clean['reader_s']}s  "
            f"ratio {clean['ratio']}x (target >= 0.9)"
        )
        flagged = quarantine(files, 0.001)
        dirty = compare(root, files, args.repeat)
        print(
            f"0.1% flagged ({flagged:,} rows): plain {dirty['plain_s']}s  "
            f"reader {dirty['reader_s']}s  ratio {dirty['ratio']}x (target >= 0.8); "
            f"reader returned {dirty['reader_rows']:,} of {dirty['plain_rows']:,}"
        )
        table_mb = open_store(root).read("trade", DAY, END).nbytes / 2**20
        child = subprocess.run(
            [sys.executable, __file__, "--stream-child", str(root)],
            capture_output=True,
            text=True,
            check=True,
        )
        peak = json.loads(child.stdout)
        print(
            f"batches: {peak['rows']:,} rows in {peak['batches']} batches; peak Arrow memory "
            f"{peak['peak_arrow_mb']} MB, peak RSS {peak['peak_rss_mb']} MB "
            f"(after imports {peak['rss_before_mb']} MB); the whole table is {table_mb:.0f} MB"
        )
        print(
            json.dumps(
                {
                    "clean": clean,
                    "quarantined": dirty,
                    "flagged_rows": flagged,
                    "stream": peak,
                    "table_mb": round(table_mb, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
