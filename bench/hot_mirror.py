"""Hot mirror benchmark: daemon processes on loopback.

Measures, in one run:

1. ingest with two subscribers: origin A's synthetic feed asked for
   ``--ingest-rate`` records/s while B and C (two more processes) mirror it;
   the records/s A journaled, how many the feed skipped (it skips only when A
   falls more than a second behind), A's peak ingest lag and both
   subscribers' position at the end;
2. sustained mirror throughput per link: A ingests a backlog with B down,
   then B connects and drains it; records/s = applied records / drain time.
   Measured twice: with a buffer that holds the whole backlog (served from
   memory) and with a 10,000-record buffer (served from journal segments,
   then the buffer — the catch-up path after a long outage), the latter
   against the rate A ingests meanwhile (``--rate``);
3. latency at a steady 10,000 records/s: p99 of ingest-at-A → applied-at-B
   (per batch, the oldest record of the batch, so an upper bound per record),
   with its baseline from the same seconds: how late a bare event loop in
   another process wakes from 1 ms sleeps (the stalls the box imposes on any
   process), and each daemon's loop-lag probe;
4. memory: RSS of origin and subscriber, replay-buffer bytes against the limit;
5. raw ``websockets`` moving the same frames from one process to another
   (a server process and a client process), and the mirror's ratio to it.

Usage: ``python bench/hot_mirror.py [--ingest-rate 100000] [--rate 60000] [--phases
latency,raw]``;
``CRYPTORUN_EVENT_LOOP=asyncio`` runs the daemons on the asyncio loop.
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

    try:
        from cryptorun_daemon.runtime import event_loop
    except ImportError:  # a checkout from before uvloop (baseline runs of this script)
        asyncio.run(main())
        return
    event_loop.run(main())


def write_config(
    directory: Path,
    region: str,
    port: int,
    peer: str,
    peer_port: int,
    hot: dict[str, Any],
    rate: float | None,
    extra_peers: dict[str, int] | None = None,
    warm_to: list[str] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(TOKEN)
    (directory / "token").chmod(0o600)  # the daemon refuses a secret others can read
    lines = [
        f'region = "{region}"',
        "[admin]",
        f'listen = "127.0.0.1:{port}"',
        'token_file = "token"',
        "[storage]",
        'root = "data"',
        "[peers]",
        f'{peer} = "http://127.0.0.1:{peer_port}"',
        *(f'{name} = "http://127.0.0.1:{p}"' for name, p in (extra_peers or {}).items()),
        "[hot]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in hot.items()]
    if warm_to:
        # Makes this region the warm primary, so its sealer seals (without a rule no
        # region is, and the sealer only stages).
        lines += [
            "[[rules]]",
            'tier = "warm"',
            f'from = "{region}"',
            f"to = {json.dumps(warm_to)}",
            'lag_slo = "60s"',
        ]
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
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.get(f"http://127.0.0.1:{port}/v1/status?tier=hot", headers=headers) as resp:
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
            origin_at_start = head_start
            while True:
                st = await status(session, pb)
                applied = st["origins"]["eu"]["applied_seq"]
                if first is None and applied > 0:
                    t0, first = time.monotonic(), applied
                    origin_at_start = (await status(session, pa))["origins"]["eu"]["head_seq"]
                if applied >= head_start:
                    break
                await asyncio.sleep(0.02)
            elapsed = time.monotonic() - t0
            a_status = await status(session, pa)
            origin_rate = (a_status["origins"]["eu"]["head_seq"] - origin_at_start) / elapsed
            return {
                "origin_records_per_s": round(origin_rate),
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


async def ingest_two_subscribers(
    tmp: Path, rate: float, seconds: float, window: int
) -> dict[str, Any]:
    """A ingests at ``rate`` while B and C both mirror it and A's sealer seals
    ``window``-second windows; what A took and skipped, and the windows it sealed."""
    pa, pb, pc = free_port(), free_port(), free_port()
    hot = {"buffer_records": 200_000, "buffer_bytes": 256 << 20, "heartbeat_interval": "1s"}
    # Short windows, so the sealer stages and seals (window closes) while A ingests.
    sealing = {**hot, "partition_length": f"{window}s", "seal_grace": "1s"}
    a = Proc(
        write_config(tmp / "ing-a", "eu", pa, "us", pb, sealing, rate, {"ap": pc}, ["us", "ap"])
    )
    b = Proc(write_config(tmp / "ing-b", "us", pb, "eu", pa, hot, None))
    c = Proc(write_config(tmp / "ing-c", "ap", pc, "eu", pa, hot, None))
    rss: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    try:
        async with aiohttp.ClientSession() as session:
            for port in (pa, pb, pc):
                await wait_ready(session, port)
            await asyncio.sleep(3)  # warm-up: connections up, first segments open
            s0 = await status(session, pa)
            t0 = time.monotonic()
            end = t0 + seconds
            while time.monotonic() < end:
                for key, proc in (("a", a), ("b", b), ("c", c)):
                    rss[key].append(proc.rss_mb())
                await asyncio.sleep(0.5)
            s1 = await status(session, pa)
            elapsed = time.monotonic() - t0
            sb, sc = await status(session, pb), await status(session, pc)
            head0 = s0["origins"]["eu"]["head_seq"]
            head1 = s1["origins"]["eu"]["head_seq"]
            feed0, feed1 = s0["feeds"]["syn"], s1["feeds"]["syn"]
            return {
                "asked": rate,
                "records_per_s": round((head1 - head0) / elapsed),
                "skipped": feed1["skipped"] - feed0["skipped"],
                "max_lag_s": feed1.get("ingest", {}).get("max_lag_seconds"),
                "head": head1,
                "b_applied": sb["origins"]["eu"]["applied_seq"],
                "c_applied": sc["origins"]["eu"]["applied_seq"],
                "rss_mb": {k: round(max(v), 1) for k, v in rss.items() if v},
                "windows_sealed": s1["sealer"]["windows_sealed"] - s0["sealer"]["windows_sealed"],
                "sealer_primary": s1["sealer"]["primary"],
                "sealer_error": s1["sealer"]["last_error"],
            }
    finally:
        for proc in (c, b, a):
            proc.stop()


async def loop_lag(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The daemon's ``cryptorun_event_loop_lag_seconds`` histogram: ``{le: cumulative count}``."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cryptorun_event_loop_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def lag_summary(before: dict[str, float], after: dict[str, float]) -> str:
    """Ticks of the loop-lag probe (10 a second) during the run, and how many woke later
    than each bucket bound: a stall of the loop shows up here, whatever caused it."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get("+Inf", 0)
    late = [f">{le}s: {int(total - n)}" for le, n in delta.items() if le != "+Inf" and n < total]
    return f"{int(total)} ticks, late " + (", ".join(late) if late else "none")


_STALL_PROBE = """
import asyncio, sys, time
try:
    import uvloop
    run = uvloop.run
except ImportError:
    run = asyncio.run
async def main(seconds):
    late = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        asked = time.monotonic() + 0.001
        await asyncio.sleep(0.001)
        late.append(time.monotonic() - asked)
    late.sort()
    pick = lambda q: round(late[min(len(late) - 1, int(q * len(late)))] * 1e3, 3)
    print(pick(0.5), pick(0.99), pick(1.0), len(late))
run(main(float(sys.argv[1])))
"""


def stall_probe(seconds: float) -> subprocess.Popen[str]:
    """A process that only sleeps 1 ms at a time on an event loop and times how late it
    wakes: the stalls the box itself imposes on any process (the latency baseline)."""
    return subprocess.Popen(
        [sys.executable, "-c", _STALL_PROBE, str(seconds)], stdout=subprocess.PIPE, text=True
    )


async def latency(tmp: Path, seconds: float) -> dict[str, Any]:
    pa, pb = free_port(), free_port()
    limit_bytes = 16 << 20
    hot = {"buffer_records": 100_000, "buffer_bytes": limit_bytes, "heartbeat_interval": "1s"}
    a = Proc(write_config(tmp / "lat-a", "eu", pa, "us", pb, hot, 10_000))
    b = Proc(write_config(tmp / "lat-b", "us", pb, "eu", pa, hot, None))
    rss: list[float] = []
    rss_b: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, pa)
            await wait_ready(session, pb)
            await asyncio.sleep(2)  # warm-up; the client's sample window is its last 8192 batches
            lag_a0, lag_b0 = await loop_lag(session, pa), await loop_lag(session, pb)
            probe = stall_probe(seconds)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                rss.append(a.rss_mb())
                rss_b.append(b.rss_mb())
                await asyncio.sleep(0.5)
            sb, sa = await status(session, pb), await status(session, pa)
            lag_a, lag_b = await loop_lag(session, pa), await loop_lag(session, pb)
            probe_out, _ = await asyncio.to_thread(probe.communicate)
            p50, p99, worst, ticks = probe_out.split()
            lat = sb["origins"]["eu"]["apply_latency"]
            return {
                "rate": 10_000,
                "applied": sb["origins"]["eu"]["applied_seq"],
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
                "max_ms": lat["max_ms"],
                "batches": lat["batches"],
                "origin_rss_mb_max": round(max(rss), 1),
                "subscriber_rss_mb_max": round(max(rss_b), 1),
                "origin_buffer_bytes": sa["buffer"]["bytes"],
                "origin_buffer_limit_bytes": limit_bytes,
                "loop_lag_origin": lag_summary(lag_a0, lag_a),
                "loop_lag_subscriber": lag_summary(lag_b0, lag_b),
                "blocking_reservations": sa["journal"].get("blocking_reservations"),
                "box_stalls": f"p50 {p50} ms, p99 {p99} ms, max {worst} ms over {ticks} sleeps",
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


_RAW_SERVER = """
import asyncio, pickle, sys
import websockets
frames = pickle.load(open(sys.argv[1], "rb"))
async def handler(ws):
    for f in frames:
        await ws.send(f)
    await ws.close()
async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as s:
        print(s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"""
_RAW_CLIENT = """
import asyncio, sys, time
import websockets
async def main():
    async with websockets.connect(f"ws://127.0.0.1:{sys.argv[1]}", max_size=None,
                                  compression=None) as c:
        n = 0; t0 = time.perf_counter()
        async for m in c:
            n += 1
        print(time.perf_counter() - t0, n)
asyncio.run(main())
"""


def raw_websockets(frames: list[bytes], batch: int) -> dict[str, Any]:
    """Same frames from a bare ``websockets`` server process to a client process."""
    import pickle

    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as handle:
        pickle.dump(frames, handle)
    server = subprocess.Popen(
        [sys.executable, "-c", _RAW_SERVER, handle.name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        out = subprocess.run(
            [sys.executable, "-c", _RAW_CLIENT, port], capture_output=True, text=True, check=True
        )
    finally:
        server.kill()
        server.wait()
        os.unlink(handle.name)
    seconds = float(out.stdout.split()[0])
    records = len(frames) * batch
    return {
        "records": records,
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds),
    }


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def amain(args: argparse.Namespace) -> None:
    loop = os.environ.get("CRYPTORUN_EVENT_LOOP", "auto")
    print(f"event loop: {loop} (CRYPTORUN_EVENT_LOOP); cpus: {os.cpu_count()}; load {_load()}")
    phases = set(args.phases.split(","))
    tp: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "ingest" in phases:
            ing = await ingest_two_subscribers(
                tmp, args.ingest_rate, args.ingest_seconds, args.window_seconds
            )
            print(
                f"ingest with two subscribers: {ing['records_per_s']:,} records/s of "
                f"{ing['asked']:,.0f} asked, skipped {ing['skipped']:,}, peak ingest lag "
                f"{ing['max_lag_s']} s; head {ing['head']:,}, subscribers at "
                f"{ing['b_applied']:,} and {ing['c_applied']:,}; RSS MB {ing['rss_mb']}; "
                f"windows sealed meanwhile {ing['windows_sealed']} ({args.window_seconds} s "
                f"windows, primary {ing['sealer_primary']}, error {ing['sealer_error']}); "
                f"load {_load()}"
            )
        if "mirror" in phases:
            tp = await throughput(tmp, args.backlog_seconds, args.rate)
            print(
                f"sustained mirror: {tp['records_per_s']:,} records/s "
                f"({tp['drained']:,} records drained in {tp['seconds']} s; "
                f"backlog {tp['backlog_records']:,}; origin feed {tp['origin_feed']}); "
                f"load {_load()}"
            )
        if "catchup" in phases:
            tj = await throughput(tmp, args.backlog_seconds, args.rate, buffer_records=10_000)
            ratio = tj["records_per_s"] / max(1, tj["origin_records_per_s"])
            print(
                f"catch-up from the journal (10,000-record buffer): "
                f"{tj['records_per_s']:,} records/s while the origin ingested "
                f"{tj['origin_records_per_s']:,}/s = {ratio:.2f}x ({tj['drained']:,} records "
                f"drained in {tj['seconds']} s; {tj['from_journal']:,} served from journal "
                f"segments); load {_load()}"
            )
        if "latency" in phases:
            lat = await latency(tmp, args.latency_seconds)
            print(
                f"latency at {lat['rate']:,} records/s: p50 {lat['p50_ms']} ms, "
                f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms over {lat['batches']} batches "
                f"({lat['applied']:,} records); loop lag origin {lat['loop_lag_origin']}; "
                f"subscriber {lat['loop_lag_subscriber']}; reservations fsynced on the "
                f"origin's loop {lat['blocking_reservations']}; load {_load()}"
            )
            print(
                f"baseline, same time: a bare event loop sleeping 1 ms at a time woke late by "
                f"{lat['box_stalls']}"
            )
            print(
                f"memory: origin RSS max {lat['origin_rss_mb_max']} MB, subscriber "
                f"{lat['subscriber_rss_mb_max']} MB; replay buffer "
                f"{lat['origin_buffer_bytes']:,} B of {lat['origin_buffer_limit_bytes']:,} B limit"
            )
    if "raw" in phases:
        frames = sample_frames(200_000, 4096)
        raw = raw_websockets(frames, 4096)
        print(
            f"raw websockets, same frames, process to process: {raw['records_per_s']:,} "
            f"records/s ({raw['records']:,} records in {raw['seconds']} s)"
        )
        if tp is not None:
            ratio = tp["records_per_s"] / raw["records_per_s"]
            print(f"ratio mirror/raw: {ratio:.2f}; load {_load()}")
    print(
        "targets: ingest >= 100,000 records/s with two subscribers and zero skipped; "
        "catch-up >= 3x ingest; mirror >= 0.5x raw websockets; p99 <= 20 ms at 10,000/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--backlog-seconds", type=float, default=8.0)
    parser.add_argument(
        "--rate", type=float, default=60_000.0, help="origin ingest rate while building the backlog"
    )
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument(
        "--ingest-rate", type=float, default=100_000.0, help="asked of A with two subscribers"
    )
    parser.add_argument("--ingest-seconds", type=float, default=20.0)
    parser.add_argument(
        "--window-seconds", type=int, default=5, help="A's hot.partition_length while ingesting"
    )
    parser.add_argument(
        "--phases",
        default="ingest,mirror,catchup,latency,raw",
        help="comma-separated subset of ingest,mirror,catchup,latency,raw",
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
