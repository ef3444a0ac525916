"""Hot-tier soak: two regions mirroring both ways, sealing, for half an hour.

Two daemon processes (``eu`` and ``us``, real ``python -m cryptorun_daemon
daemon`` on loopback) each ingest a synthetic feed at ``--rate`` records/s and
mirror each other's stream; ``eu`` is the warm and cold primary (rules ``warm``
and ``cold`` from ``eu`` to ``us``), so it seals ``--window`` long windows
and ``us`` is the replica that trims its journal as warm replication delivers
the sealed partitions. Every ``--every`` seconds the script prints one row:
RSS of both daemons, both journals' size on disk and records (estimated from
the mean line size of the newest segment), records ingested and applied,
skipped by the feeds, windows sealed, rows the sealers staged per second
(``sealer.rows_staged`` in status, against the lines each journal gains), and
the load average.

Targets (issue 16): RSS of both < 500 MB throughout; the replica's journal
bounded by the warm lag SLO's worth of records. A replica can trim a segment
only once every window it holds is sealed at the primary and replicated, so
the bound printed is ``(window + seal_grace + warm lag SLO) × records/s
journaled by the replica`` (its own feed plus the mirrored one): the records
of the open window plus those of one closing window within the SLO.

Usage: ``python bench/hot_soak.py [--rate 20000] [--minutes 30] [--window 10m]``.
On a shared machine, wrap it in ``flock`` on a lock file the other long runs use too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptorun_daemon.config.durations import parse_duration  # noqa: E402
from tests.harness.daemons import RegionSpec, wait_until_ready  # noqa: E402
from tests.harness.net import free_port  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"
GRACE = "30s"


def region_specs(tmp: Path, rate: float, window: str, warm_slo: str) -> list[RegionSpec]:
    ports = {"eu": free_port(), "us": free_port()}
    rules = [
        {"tier": "hot", "from": "eu", "to": ["us"], "lag_slo": "5s"},
        {"tier": "hot", "from": "us", "to": ["eu"], "lag_slo": "5s"},
        {"tier": "warm", "from": "eu", "to": ["us"], "lag_slo": warm_slo},
        {"tier": "cold", "from": "eu", "to": ["us"], "lag_slo": "30m"},
    ]
    specs = []
    for region, seed in (("eu", 1), ("us", 2)):
        peer = "us" if region == "eu" else "eu"
        spec = RegionSpec(
            region,
            ports[region],
            tmp / region,
            peers={peer: ports[peer]},
            rules=rules,
            token=TOKEN,
            sections={"hot": {"partition_length": window, "seal_grace": GRACE}},
            feeds=[
                {
                    "kind": "synthetic",
                    "name": "syn",
                    "venue": f"syn{region}",
                    "rate": rate,
                    "seed": seed,
                    "symbols": ["BTC/USD", "ETH/USD", "SOL/USD"],
                    "book_depth": 5,
                }
            ],
        )
        specs.append(spec)
    return specs


def start(spec: RegionSpec) -> subprocess.Popen[bytes]:
    """Write the region's config and start its daemon process (output to daemon.log)."""
    config = spec.write()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (spec.directory / "daemon.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cryptorun_daemon", "daemon", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=spec.directory,
            env=env,
        )


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def journal_dir(spec: RegionSpec) -> Path:
    found = sorted(spec.storage_root.glob("**/*.jsonl"))
    return found[0].parent if found else spec.storage_root


def journal_records_estimate(directory: Path, size: int) -> int:
    """Records in ``size`` journal bytes, by the mean line size of the newest segment's tail."""
    segments = sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not segments or size == 0:
        return 0
    with segments[-1].open("rb") as handle:
        handle.seek(max(0, segments[-1].stat().st_size - (1 << 20)))
        tail = handle.read()
    lines = tail.count(b"\n")
    return round(size / (len(tail) / lines)) if lines > 1 else 0


async def stream_status(session: aiohttp.ClientSession, spec: RegionSpec) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.get(f"{spec.base_url}/v1/status?tier=hot", headers=headers) as resp:
        doc = await resp.json()
    stream: dict[str, Any] = doc["tiers"]["hot"]["stream"]
    return stream


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def soak(args: argparse.Namespace, tmp: Path) -> int:
    window_s = parse_duration(args.window)
    bound_records = round(
        (window_s + parse_duration(GRACE) + parse_duration(args.warm_slo)) * 2 * args.rate
    )
    specs = region_specs(tmp, args.rate, args.window, args.warm_slo)
    procs = {spec.region: start(spec) for spec in specs}
    worst = {"rss_eu": 0.0, "rss_us": 0.0, "replica_records": 0, "replica_bytes": 0}
    try:
        for spec in specs:
            await wait_until_ready(spec.base_url, timeout=60, proc=procs[spec.region])
        print(
            f"soak: eu and us at {args.rate:,.0f} records/s each, mirroring both ways, "
            f"{args.window} windows (grace {GRACE}), warm lag SLO {args.warm_slo}, "
            f"{args.minutes} min; replica journal bound {bound_records:,} records; "
            f"cpus {os.cpu_count()}",
            flush=True,
        )
        print(
            "| min | RSS eu MB | RSS us MB | journal eu MB (records) | journal us MB (records) "
            "| eu head / us applied | us head / eu applied | skipped eu/us | sealed eu/us "
            "| staged rows/s eu/us | load |",
            flush=True,
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        staged_before = {"eu": 0, "us": 0}
        started = time.monotonic()
        end = started + args.minutes * 60
        minute = 0
        async with aiohttp.ClientSession() as session:
            peak = {"eu": 0.0, "us": 0.0}
            next_row = started + args.every
            while time.monotonic() < end:
                for region, proc in procs.items():
                    if proc.poll() is not None:
                        print(f"daemon {region} exited with {proc.returncode}", flush=True)
                        return 1
                    peak[region] = max(peak[region], rss_mb(proc.pid))
                if time.monotonic() < next_row:
                    await asyncio.sleep(1.0)
                    continue
                next_row += args.every
                minute += 1
                st = {spec.region: await stream_status(session, spec) for spec in specs}
                journal = {}
                for spec in specs:
                    size = st[spec.region]["journal"]["bytes"]
                    records = journal_records_estimate(journal_dir(spec), size)
                    journal[spec.region] = (size, records)
                worst["rss_eu"] = max(worst["rss_eu"], peak["eu"])
                worst["rss_us"] = max(worst["rss_us"], peak["us"])
                worst["replica_bytes"] = max(worst["replica_bytes"], journal["us"][0])
                worst["replica_records"] = max(worst["replica_records"], journal["us"][1])
                eu, us = st["eu"], st["us"]
                staged = {r: st[r]["sealer"].get("rows_staged", 0) for r in ("eu", "us")}
                rate = {r: (staged[r] - staged_before[r]) / args.every for r in staged}
                staged_before = staged
                print(
                    f"| {minute} | {peak['eu']:.0f} | {peak['us']:.0f} "
                    f"| {journal['eu'][0] / 2**20:,.0f} ({journal['eu'][1]:,}) "
                    f"| {journal['us'][0] / 2**20:,.0f} ({journal['us'][1]:,}) "
                    f"| {eu['origins']['eu']['head_seq']:,} / "
                    f"{us['origins']['eu']['applied_seq']:,} "
                    f"| {us['origins']['us']['head_seq']:,} / "
                    f"{eu['origins']['us']['applied_seq']:,} "
                    f"| {eu['feeds']['syn']['skipped']:,} / {us['feeds']['syn']['skipped']:,} "
                    f"| {eu['sealer']['windows_sealed']} / {us['sealer']['windows_sealed']} "
                    f"| {rate['eu']:,.0f} / {rate['us']:,.0f} "
                    f"| {load_average()} |",
                    flush=True,
                )
                peak = {"eu": 0.0, "us": 0.0}
    finally:
        stops = {}
        for region, proc in procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                stops[region] = time.monotonic()
        for region, proc in procs.items():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if region in stops:
                print(
                    f"{region}: SIGTERM to exit {time.monotonic() - stops[region]:.1f} s, "
                    f"code {proc.returncode}",
                    flush=True,
                )
    met_rss = max(worst["rss_eu"], worst["rss_us"]) < 500
    met_journal = worst["replica_records"] <= bound_records
    print(
        f"peak RSS eu {worst['rss_eu']:.0f} MB, us {worst['rss_us']:.0f} MB "
        f"(target < 500: {'met' if met_rss else 'NOT met'}); replica journal peak "
        f"{worst['replica_bytes'] / 2**20:,.0f} MB ~{worst['replica_records']:,} records "
        f"(bound {bound_records:,}: {'met' if met_journal else 'NOT met'})",
        flush=True,
    )
    return 0 if met_rss and met_journal else 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000.0, help="records/s per region")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window", default="10m", help="hot.partition_length")
    parser.add_argument("--warm-slo", default="2m", help="lag_slo of the warm rule")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between rows")
    parser.add_argument("--dir", type=Path, help="keep the daemons' files here")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(soak(args, args.dir)))
    with tempfile.TemporaryDirectory(prefix="hot-soak-") as tmp:
        sys.exit(asyncio.run(soak(args, Path(tmp))))


if __name__ == "__main__":
    main()
