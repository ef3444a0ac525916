"""Hot sealer memory benchmark: the streaming sealer against the previous one, same journal.

Each mode runs in its own process (so peak RSS is its own). A simulated clock
drives a real :class:`~cryptorun_daemon.hot.journal.Journal` and
:class:`~cryptorun_daemon.hot.sealer.HotSealer`: every simulated second,
``--rate`` synthetic trades and books (three symbols, a peer's copy of every
third record) are journaled; the streaming sealer runs a round every
``STAGE_INTERVAL`` simulated seconds (as its run loop does while the journal
grows), the previous sealer only when a window closes (as its loop did).
After each window close the script prints the process's peak RSS so far, its
current RSS, and the sealing rate (rows sealed / seconds spent in rounds).

Baseline: the previous sealer, loaded from git history (``--baseline-rev``,
the last commit before the streaming sealer) into the same interpreter.

Usage: ``python bench/sealer_memory.py [--rate 3000] [--window 120] [--windows 3]``.
``--mode new|old`` is the internal entry that runs one mode.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptorun_daemon.config import FeedConfig  # noqa: E402
from cryptorun_daemon.hot.authority import SourceAuthority  # noqa: E402
from cryptorun_daemon.hot.feeds_builtin import SyntheticFeed  # noqa: E402
from cryptorun_daemon.hot.journal import Journal  # noqa: E402
from cryptorun_daemon.hot.record import encode_record  # noqa: E402
from cryptorun_daemon.metrics import Metrics  # noqa: E402

S = 1_000_000_000
BASELINE_REV = "7cf1a84"  # the last commit with the previous (in-memory) sealer


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux


def load_sealer(mode: str, rev: str) -> Any:
    if mode == "new":
        from cryptorun_daemon.hot.sealer import HotSealer

        return HotSealer
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:cryptorun_daemon/hot/sealer.py"],
        check=True,
        capture_output=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "previous_sealer.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("previous_sealer", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["previous_sealer"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.HotSealer


async def run_mode(args: argparse.Namespace) -> list[dict[str, Any]]:
    sealer_class = load_sealer(args.mode, args.baseline_rev)
    work = Path(tempfile.mkdtemp(prefix="sealer-bench-"))
    journal = Journal(
        work / "journal", segment_bytes=4 << 20, fsync_interval=1, fsync_records=10**9
    )
    journal.recover(local_origin="eu", tail_records=10, tail_bytes=1 << 16)
    authority = SourceAuthority("eu", ["eu", "us"], gate_seconds=5)
    for symbol in ("BTC/USD", "ETH/USD", "SOL/USD"):
        authority.observe("eu", "synthetic", symbol, 1)
    metrics = Metrics()
    window_ns = int(args.window * S)
    start = (time.time_ns() // window_ns - args.windows - 2) * window_ns
    clock = {"now": start}
    sealer = sealer_class(
        region="eu",
        root=work / "root",
        journal=journal,
        authority=authority,
        partition_length=args.window,
        seal_grace=1,
        is_warm_primary=lambda: True,
        epoch=lambda: 1,
        metrics=metrics,
        now_ns=lambda: clock["now"],
    )
    feed = SyntheticFeed(
        FeedConfig(
            name="syn",
            kind="synthetic",
            venue="synthetic",
            symbols=("BTC/USD", "ETH/USD", "SOL/USD"),
            rate=args.rate,
            seed=3,
            book_depth=5,
        )
    )
    for origin in ("eu", "us"):
        journal.write_control({"ctl": "replid", "o": origin, "r": origin * 20, "s": 0})
    seqs = {"eu": 0, "us": 0}
    k = start // feed.period_ns
    out: list[dict[str, Any]] = []
    sealing_seconds, sealed_rows, journaled = 0.0, 0, 0
    stage_every = 5  # simulated seconds, the streaming sealer's STAGE_INTERVAL
    total_seconds = args.window * args.windows + 2
    for second in range(1, int(total_seconds) + 1):
        until = start + second * S
        lines = []
        while k * feed.period_ns < until:
            record = feed.event(k)
            fields = {**record.fields, "ingest_ts": record.fields["ts"] + 1000}
            for origin in ("eu", "us") if k % 3 == 0 else ("eu",):
                seqs[origin] += 1
                ingest = fields["ts"] + 2000
                lines.append(
                    encode_record(origin, seqs[origin], ingest, record.dataset, fields).line
                )
            k += 1
        journal.write_lines(lines)
        await journal.sync()  # the syncer's job in the daemon (fsync once a second)
        journaled += len(lines)
        clock["now"] = until
        closes = (until - S) // window_ns != (until - S - S) // window_ns
        if args.mode == "new" and second % stage_every != 0 and not closes:
            continue
        if args.mode == "old" and not closes:
            continue
        began = time.perf_counter()
        result = await sealer.round(until)
        sealing_seconds += time.perf_counter() - began
        sealed_rows += result.rows
        if result.windows_sealed:
            out.append(
                {
                    "window": len(out) + 1,
                    "journaled": journaled,
                    "peak_rss_mb": round(peak_mb(), 1),
                    "rss_mb": round(rss_mb(), 1),
                    "sealed_rows": sealed_rows,
                    "rows_per_second": round(sealed_rows / sealing_seconds)
                    if sealing_seconds
                    else 0,
                    "journal_mb": round(journal.bytes_on_disk / 1e6, 1),
                }
            )
    journal.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3000.0, help="synthetic events/s")
    parser.add_argument("--window", type=float, default=120.0, help="window length, seconds")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--mode", choices=("new", "old"))
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(asyncio.run(run_mode(args))))
        return
    print(
        f"{args.rate:g} events/s (+1/3 peer copies), {args.window:g} s windows, "
        f"{args.windows} windows, baseline {args.baseline_rev}"
    )
    results = {}
    for mode in ("old", "new"):
        proc = subprocess.run(
            [sys.executable, __file__, "--mode", mode, *sys.argv[1:]],
            check=True,
            capture_output=True,
            text=True,
        )
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    header = "| sealer | window | journaled | peak RSS MB | RSS MB | sealed rows/s | journal MB |"
    print(header)
    print("|---" * 7 + "|")
    for mode, label in (("old", "previous"), ("new", "streaming")):
        for row in results[mode]:
            print(
                f"| {label} | {row['window']} | {row['journaled']:,} | {row['peak_rss_mb']} "
                f"| {row['rss_mb']} | {row['rows_per_second']:,} | {row['journal_mb']} |"
            )
    old_peak = max(r["peak_rss_mb"] for r in results["old"])
    new_peak = max(r["peak_rss_mb"] for r in results["new"])
    print(f"peak RSS streaming / previous: {new_peak / old_peak:.2f}")


if __name__ == "__main__":
    main()
