"""Hot mirror benchmark: two daemon processes on loopback.

Measures, in one run:

1. sustained mirror throughput per link: A ingests a backlog with B down,
   then B connects and drains it; records/s = applied records / drain time.
   Measured twice: with a buffer that holds the whole backlog (served from
   memory) and with a 10,000-record buffer (served from journal segments,
   then the buffer — the catch-up path after a long outage);
2. latency at a steady 10,000 records/s: p99 of ingest-at-A → applied-at-B
   (per batch, the oldest record of the batch, so an upper bound per record);
3. origin memory: A's RSS and replay-buffer bytes against the configured limit;
4. raw ``websockets`` throughput for the same batched payloads, and our ratio.

Usage: ``python bench/hot_mirror.py [--backlog-seconds 8] [--rate 60000]``.
``--serve CONFIG`` is the internal entry that runs one daemon process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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

from cryptorun_daemon.hot import protocol  # noqa: E402
from cryptorun_daemon.hot.feeds_builtin import SyntheticFeed  # noqa: E402
from cryptorun_daemon.hot.record import encode_record  # noqa: E402
from tests.harness.net import free_port  # noqa: E402

TOKEN = "bench-token-0123456789"


def serve(config_path: str) -> None:
    """Run one daemon with the hot component (added unless the build already wires it)."""
    from cryptorun_daemon.components import build_components
    from cryptorun_daemon.config import load_config
    from cryptorun_daemon.daemon import Daemon
    from cryptorun_daemon.hot.component import HotComponent
    from cryptorun_daemon.logsetup import configure_logging

    config = load_config(config_path)
    configure_logging("warning", "console")

    async def main() -> None:
        probe = Daemon(config)
        wired = any(c.name == "hot" for c in build_components(probe.ctx))
        daemon = Daemon(config, extra_components=[] if wired else [HotComponent])
        await daemon.serve()

    asyncio.run(main())


def write_config(
    directory: Path,
    region: str,
    port: int,
    peer: str,
    peer_port: int,
    hot: dict[str, Any],
    rate: float | None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(TOKEN)
    lines = [
        f'region = "{region}"',
        "[admin]",
        f'listen = "127.0.0.1:{port}"',
        'token_file = "token"',
        "[storage]",
        'root = "data"',
        "[peers]",
        f'{peer} = "http://127.0.0.1:{peer_port}"',
        "[hot]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in hot.items()]
    if rate:
        lines += [
            "[[feeds]]",
            'kind = "synthetic"',
            'name = "syn"',
            'venue = "bench"',
            f"rate = {rate}",
            'symbols = ["BTC/USD", "ETH/USD", "SOL/USD"]',
            "book_depth = 5",
        ]
    path = directory / f"{region}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Proc:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.with_suffix(".log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


async def status(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/v1/status?tier=hot") as resp:
        doc = await resp.json()
    stream: dict[str, Any] = doc["tiers"]["hot"]["stream"]
    return stream


async def wait_ready(session: aiohttp.ClientSession, port: int) -> None:
    for _ in range(400):
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"daemon on {port} not ready")


async def throughput(
    tmp: Path, backlog_seconds: float, rate: float, buffer_records: int = 2_000_000
) -> dict[str, Any]:
    pa, pb = free_port(), free_port()
    hot = {"buffer_records": buffer_records, "buffer_bytes": 1 << 30, "heartbeat_interval": "1s"}
    tag = f"tp{buffer_records}"
    a = Proc(write_config(tmp / f"{tag}-a", "eu", pa, "us", pb, hot, rate))
    b: Proc | None = None
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, pa)
            await asyncio.sleep(backlog_seconds)
            head_start = (await status(session, pa))["origins"]["eu"]["head_seq"]
            b = Proc(write_config(tmp / f"{tag}-b", "us", pb, "eu", pa, hot, None))
            await wait_ready(session, pb)
            t0, first = time.monotonic(), None
            applied = 0
            while True:
                st = await status(session, pb)
                applied = st["origins"]["eu"]["applied_seq"]
                if first is None and applied > 0:
                    t0, first = time.monotonic(), applied
                if applied >= head_start:
                    break
                await asyncio.sleep(0.02)
            elapsed = time.monotonic() - t0
            a_status = await status(session, pa)
            return {
                "backlog_records": head_start,
                "drained": applied - (first or 0),
                "seconds": round(elapsed, 3),
                "records_per_s": round((applied - (first or 0)) / elapsed),
                "origin_feed": a_status["feeds"]["syn"],
                "from_journal": a_status["journal"].get("served_records", 0),
            }
    finally:
        for proc in (b, a):
            if proc is not None:
                proc.stop()


async def latency(tmp: Path, seconds: float) -> dict[str, Any]:
    pa, pb = free_port(), free_port()
    limit_bytes = 16 << 20
    hot = {"buffer_records": 100_000, "buffer_bytes": limit_bytes, "heartbeat_interval": "1s"}
    a = Proc(write_config(tmp / "lat-a", "eu", pa, "us", pb, hot, 10_000))
    b = Proc(write_config(tmp / "lat-b", "us", pb, "eu", pa, hot, None))
    rss: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, pa)
            await wait_ready(session, pb)
            await asyncio.sleep(2)  # warm-up; the client's sample window is its last 8192 batches
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                rss.append(a.rss_mb())
                await asyncio.sleep(0.5)
            sb, sa = await status(session, pb), await status(session, pa)
            lat = sb["origins"]["eu"]["apply_latency"]
            return {
                "rate": 10_000,
                "applied": sb["origins"]["eu"]["applied_seq"],
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
                "max_ms": lat["max_ms"],
                "batches": lat["batches"],
                "origin_rss_mb_max": round(max(rss), 1),
                "origin_buffer_bytes": sa["buffer"]["bytes"],
                "origin_buffer_limit_bytes": limit_bytes,
            }
    finally:
        b.stop()
        a.stop()


def sample_frames(count: int, batch: int) -> list[bytes]:
    """Frames shaped like the daemon's: synthetic records, batches of ``batch``."""
    from cryptorun_daemon.config import FeedConfig

    feed = SyntheticFeed(
        FeedConfig(
            name="s",
            kind="synthetic",
            venue="bench",
            symbols=("BTC/USD", "ETH/USD", "SOL/USD"),
            book_depth=5,
        )
    )
    records = []
    for k in range(count):
        ev = feed.event(k)
        records.append(
            encode_record(
                "eu", k + 1, time.time_ns(), ev.dataset, {**ev.fields, "ingest_ts": time.time_ns()}
            )
        )
    return [
        protocol.encode_records("r", records[i : i + batch], count) for i in range(0, count, batch)
    ]


def raw_websockets(frames: list[bytes], batch: int) -> dict[str, Any]:
    """Same frames through a bare ``websockets`` server → client in a second process."""
    code = """
import asyncio, sys, time, pickle
import websockets
frames = pickle.load(open(sys.argv[1], "rb"))
async def handler(ws):
    for f in frames:
        await ws.send(f)
    await ws.close()
async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as s:
        port = s.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=None,
                                      compression=None) as c:
            n = 0; t0 = time.perf_counter()
            async for m in c:
                n += 1
            dt = time.perf_counter() - t0
    print(dt)
asyncio.run(main())
"""
    import pickle

    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as handle:
        pickle.dump(frames, handle)
    out = subprocess.run(
        [sys.executable, "-c", code, handle.name], capture_output=True, text=True, check=True
    )
    os.unlink(handle.name)
    seconds = float(out.stdout.strip())
    records = len(frames) * batch
    return {
        "records": records,
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds),
    }


async def amain(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tp = await throughput(tmp, args.backlog_seconds, args.rate)
        print(
            f"sustained mirror: {tp['records_per_s']:,} records/s "
            f"({tp['drained']:,} records drained in {tp['seconds']} s; "
            f"backlog {tp['backlog_records']:,}; origin feed {tp['origin_feed']})"
        )
        tj = await throughput(tmp, args.backlog_seconds, args.rate, buffer_records=10_000)
        print(
            f"sustained mirror from the journal (10,000-record buffer): "
            f"{tj['records_per_s']:,} records/s ({tj['drained']:,} records drained in "
            f"{tj['seconds']} s; {tj['from_journal']:,} served from journal segments)"
        )
        lat = await latency(tmp, args.latency_seconds)
        print(
            f"latency at {lat['rate']:,} records/s: p50 {lat['p50_ms']} ms, "
            f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms over {lat['batches']} batches "
            f"({lat['applied']:,} records)"
        )
        print(
            f"origin memory: RSS max {lat['origin_rss_mb_max']} MB; replay buffer "
            f"{lat['origin_buffer_bytes']:,} B of {lat['origin_buffer_limit_bytes']:,} B limit"
        )
    frames = sample_frames(200_000, 4096)
    raw = raw_websockets(frames, 4096)
    print(
        f"raw websockets, same frames: {raw['records_per_s']:,} records/s "
        f"({raw['records']:,} records in {raw['seconds']} s)"
    )
    print(f"ratio daemon/raw: {tp['records_per_s'] / raw['records_per_s']:.2f}")
    print("targets: >= 100,000 records/s per link; p99 <= 50 ms at 10,000 records/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--backlog-seconds", type=float, default=8.0)
    parser.add_argument(
        "--rate", type=float, default=60_000.0, help="origin ingest rate while building the backlog"
    )
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
