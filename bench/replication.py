"""Warm/cold replication benchmark: two daemons over loopback HTTP vs ``cp -r`` + ``sync``.

Measures, in one run on one disk:

1. throughput of a full replication of ~``--size-mb`` MB of hourly Parquet
   partitions between two daemon processes (every byte hashed with xxh3-128,
   every file fsynced, manifests and _SUCCESS committed) vs ``cp -r`` of the
   same tree followed by ``sync``; prints the ratio (target >= 0.8x);
2. a no-change re-sync of ``--small-partitions`` small (cold, daily)
   partitions already present on both sides (target < 2 s);
3. the pulling daemon's peak RSS while copying (target < 200 MB).

Usage: ``python bench/replication.py [--size-mb 450] [--small-partitions 10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.admin import auth_headers  # noqa: E402
from tests.harness.daemons import stop_process, two_regions, wait_until_ready  # noqa: E402
from tests.harness.testdata import seed_partitions  # noqa: E402

A, B = "eu-central", "us-east"

# Runs a daemon with the warm/cold component even before the lead wires it
# into components.py (and without doubling it once wired).
LAUNCHER = """
import asyncio, inspect, sys
import cryptorun_daemon.components as components
from cryptorun_daemon.config import load_config
from cryptorun_daemon.daemon import Daemon
from cryptorun_daemon.replication.component import WarmColdComponent
wired = "WarmColdComponent" in inspect.getsource(components.build_components)
asyncio.run(Daemon(load_config(sys.argv[1]),
                   extra_components=[] if wired else [WarmColdComponent]).serve())
"""


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def shell(*argv: str) -> None:
    """Run a command to completion without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(*argv)
    if await proc.wait() != 0:
        raise SystemExit(f"{argv} failed")


def start(config: Path) -> subprocess.Popen[bytes]:
    log = (config.parent / "daemon.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def sync(base_url: str, tier: str) -> dict[str, object]:
    timeout = aiohttp.ClientTimeout(total=3600)
    async with (
        aiohttp.ClientSession(headers=auth_headers(), timeout=timeout) as session,
        session.post(f"{base_url}/v1/replication/sync", json={"tier": tier, "from": A}) as resp,
    ):
        doc = await resp.json()
        if resp.status != 200:
            raise SystemExit(f"sync failed: {doc}")
    return dict(doc["passes"][0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=450)
    parser.add_argument("--small-partitions", type=int, default=10_000)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="replication.max_concurrency of the daemons"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: the system temp dir)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-repl-", dir=args.dir))
    try:
        await run(work, args.size_mb, args.small_partitions, args.concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def run(work: Path, size_mb: int, small: int, concurrency: int) -> None:
    staged = work / "staged"
    print(f"work dir {work}; replication.max_concurrency = {concurrency}")
    # --- data ------------------------------------------------------------------
    t = time.monotonic()
    symbols = ("BTC-USD", "ETH-USD", "SOL-USD")
    rows = 100_000  # ~5 MB per hourly partition with snappy
    hours = max(1, round(size_mb / 5.0 / len(symbols)))
    seed_partitions(
        staged,
        tier="warm",
        start=datetime(2025, 8, 1, tzinfo=UTC),
        count=hours,
        symbols=symbols,
        rows=rows,
    )
    big = tree_bytes(staged / "warm")
    print(
        f"generated {hours * len(symbols)} warm partitions, {big / 1e6:.0f} MB "
        f"in {time.monotonic() - t:.1f}s"
    )
    t = time.monotonic()
    seed_partitions(
        staged,
        tier="cold",
        start=datetime(1990, 1, 1, tzinfo=UTC),
        count=small,
        symbols=("BTC-USD",),
        rows=20,
    )
    print(f"generated {small} small cold partitions in {time.monotonic() - t:.1f}s")
    await shell("sync")

    # --- baseline: cp -r + sync ----------------------------------------------------
    cp_target = work / "cp-copy"
    t = time.monotonic()
    await shell("cp", "-r", str(staged / "warm"), str(cp_target))
    await shell("sync")
    cp_seconds = time.monotonic() - t
    cp_rate = big / cp_seconds / 1e6
    print(f"cp -r + sync: {big / 1e6:.0f} MB in {cp_seconds:.2f}s = {cp_rate:.0f} MB/s")
    shutil.rmtree(cp_target)

    # --- daemons ---------------------------------------------------------------------
    a, b = two_regions(
        work / "regions",
        rules=[
            {"tier": "warm", "from": A, "to": [B], "lag_slo": "1h"},
            {"tier": "cold", "from": A, "to": [B], "lag_slo": "1h"},
        ],
    )
    for spec in (a, b):
        spec.sections["replication"] = {"max_concurrency": concurrency}
        spec.sections["log"] = {"level": "warning"}
    procs = [start(a.write()), start(b.write())]
    try:
        for spec, proc in zip((a, b), procs, strict=True):
            await wait_until_ready(spec.base_url, proc=proc)
        # Both sides hold the small cold tree already: the re-sync must find nothing to do.
        for spec in (a, b):
            shutil.copytree(staged / "cold", spec.storage_root / "cold", dirs_exist_ok=True)
        await shell("sync")
        # The big tree appears at the source in one rename, after both daemons are up.
        os.rename(staged / "warm" / "trade", a.storage_root / "warm" / "trade")

        peak = 0.0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mb(procs[1].pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        rss_before = rss_mb(procs[1].pid)
        t = time.monotonic()
        report = await sync(b.base_url, "warm")
        seconds = time.monotonic() - t
        done.set()
        await sampler
        moved = int(report["bytes"])  # type: ignore[call-overload]
        rate = moved / seconds / 1e6
        print(
            f"daemon pull (HTTP, xxh3 verify, fsync, atomic commit): {moved / 1e6:.0f} MB "
            f"in {seconds:.2f}s = {rate:.0f} MB/s; committed "
            f"{report['partitions_committed']} partitions, ok={report['ok']}"
        )
        print(f"RATIO daemon / (cp -r + sync) = {rate / cp_rate:.2f}x  (target >= 0.8x)")
        print(
            f"RSS of pulling daemon: {rss_before:.0f} MB idle, peak {peak:.0f} MB while "
            f"copying  (target < 200 MB)"
        )
        again = await sync(b.base_url, "warm")
        print(f"re-run of the warm pass moved {again['bytes']} bytes")

        timings = []
        for _ in range(3):
            t = time.monotonic()
            report = await sync(b.base_url, "cold")
            timings.append(time.monotonic() - t)
            assert report["bytes"] == 0, report
        print(
            f"no-change re-sync of {small} partitions: first {timings[0]:.2f}s, then "
            f"{timings[1]:.2f}s, {timings[2]:.2f}s  (target < 2 s); "
            f"pending={report['pending_partitions']}"
        )
    finally:
        for proc in procs:
            stop_process(proc)


if __name__ == "__main__":
    asyncio.run(main())
