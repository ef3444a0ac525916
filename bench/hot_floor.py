"""Hot-path floor: the CPU cost per record of each stage, alone, on this box.

Every stage of the hot path is timed in isolation, with the daemon's own code
("ours") next to the cheapest way CPython does the same job on the same data
("floor"), so the end-to-end figures of ``bench/hot_mirror.py`` can be read
against what the box can do at all:

====================  =============================================================
stage                 ours / floor
====================  =============================================================
feed                  ``SyntheticFeed.events`` (batches of 1,024) / —
encode                ``record.encode_record`` / msgspec ``encode`` of the line struct
journal               ``Journal.write_local_lines`` + fsync per the default policy
                      (every 1,000 records) / ``os.write`` of the same bytes + fsync
ingest                ``HotLog.append_local_batch`` (encode + journal + replay buffer)
frame                 ``protocol.encode_records`` (4,096 records) / ``b"\\n".join``
transport             aiohttp server → aiohttp client (what the mirror uses) / raw
                      ``websockets`` → ``websockets``; separate processes, same
                      frames, CPU of each side from ``getrusage``
peer check            ``protocol.decode_records`` + ``line_check.check_frame`` /
                      one untyped msgspec decode of the frame's lines
peer journal          ``Journal.write_lines`` of the checked lines
staging               ``journal_columns.stage_groups`` on 4 MiB chunks / Arrow's
                      JSON reader alone on the same chunk
====================  =============================================================

CPU time is ``time.process_time`` (this process) or ``getrusage`` (the
transport's child processes), best of ``--repeat`` runs, so other work on the
box slows the wall clock but not these figures much; the load average is
printed next to them. The last table adds the stages up per process of the
``hot_mirror`` topology (an origin and two subscribers on the same 2 cores)
to give the ceiling of the end-to-end rate with this code and with the floors.

Usage: ``python bench/hot_floor.py [--records 200000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptorun_daemon.config import FeedConfig  # noqa: E402
from cryptorun_daemon.hot import protocol  # noqa: E402
from cryptorun_daemon.hot.buffer import ReplayBuffer  # noqa: E402
from cryptorun_daemon.hot.feeds_builtin import SyntheticFeed  # noqa: E402
from cryptorun_daemon.hot.journal import Journal  # noqa: E402
from cryptorun_daemon.hot.journal_columns import iter_chunks, stage_groups  # noqa: E402
from cryptorun_daemon.hot.line_check import check_frame  # noqa: E402
from cryptorun_daemon.hot.log import HotLog  # noqa: E402
from cryptorun_daemon.hot.record import HotRecord, RecordLine, encode_record  # noqa: E402
from cryptorun_daemon.metrics import Metrics  # noqa: E402
from cryptorun_daemon.runtime.event_loop import tune_gc  # noqa: E402

BATCH = 1024  # the synthetic feed's largest batch
FRAME = 4096  # the mirror server's batch_records


def _feed() -> SyntheticFeed:
    return SyntheticFeed(
        FeedConfig(
            name="s",
            kind="synthetic",
            venue="bench",
            symbols=("BTC/USD", "ETH/USD", "SOL/USD"),
            book_depth=5,
            rate=100_000,
        )
    )


def best(repeat: int, run: Callable[[], Any]) -> float:
    """Least CPU seconds of ``repeat`` calls of ``run``."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        run()
        times.append(time.process_time() - t0)
    return min(times)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float | None, str]] = []

    def add(self, stage: str, ours_s: float, floor_s: float | None, n: int, note: str = "") -> None:
        self.rows.append(
            (stage, ours_s / n * 1e6, None if floor_s is None else floor_s / n * 1e6, note)
        )
        self.show(self.rows[-1])

    @staticmethod
    def show(row: tuple[str, float, float | None, str]) -> None:
        stage, ours, floor, note = row
        floor_text = "—" if floor is None else f"{floor:.2f} µs ({1e6 / floor:,.0f}/s)"
        ratio = "" if floor is None else f" ×{ours / floor:.1f}"
        print(
            f"  {stage:<38} ours {ours:6.2f} µs ({1e6 / ours:>10,.0f}/s)  "
            f"floor {floor_text}{ratio}  {note}",
            flush=True,
        )


def stage_feed_and_encode(n: int, repeat: int, table: Table) -> tuple[list[HotRecord], list[Any]]:
    feed = _feed()
    now = time.time_ns()
    feed.events(0, BATCH, now)  # warm the first chunk

    def build() -> list[Any]:
        out: list[Any] = []
        for k in range(0, n, BATCH):
            out += feed.events(k, k + BATCH, now)
        return out

    records: list[Any] = []

    def build_keep() -> None:
        records[:] = build()

    table.add("feed: synthetic records", best(repeat, build_keep), None, n)

    hots: list[HotRecord] = []

    def ours() -> None:
        hots[:] = [
            encode_record("eu", seq, now, r.dataset, r.fields) for seq, r in enumerate(records, 1)
        ]

    encoder = msgspec.json.Encoder()

    def floor() -> None:
        enc = encoder.encode
        for seq, r in enumerate(records, 1):
            enc(RecordLine("eu", seq, now, r.dataset, r.fields))

    table.add("encode: record line (+HotRecord)", best(repeat, ours), best(repeat, floor), n)
    return hots, records


def stage_journal(hots: list[HotRecord], repeat: int, tmp: Path, table: Table) -> None:
    lines = [h.line for h in hots]
    n = len(lines)

    def ours(fsync: bool = True) -> float:
        directory = Path(tempfile.mkdtemp(dir=tmp))
        journal = Journal(directory, segment_bytes=64 << 20, fsync_interval=0.1, fsync_records=1000)
        journal.recover(local_origin="eu", tail_records=0, tail_bytes=0)

        async def go() -> float:
            t0 = time.process_time()
            for at in range(0, n, BATCH):
                journal.write_local_lines(lines[at : at + BATCH], at + 1)
                if fsync:
                    await journal.sync()  # the policy: 1,000 records (one feed batch) per fsync
                else:
                    journal.flush()
            return time.process_time() - t0

        spent = asyncio.run(go())
        journal.close()
        return spent

    def floor() -> float:
        fd = os.open(tmp / "floor.jsonl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        t0 = time.process_time()
        for at in range(0, n, BATCH):
            os.write(fd, b"\n".join(lines[at : at + BATCH]) + b"\n")
            os.fsync(fd)
        spent = time.process_time() - t0
        os.close(fd)
        return spent

    table.add("journal: append, no fsync", min(ours(False) for _ in range(repeat)), None, n)
    t_wall = time.perf_counter()
    ours_s = min(ours() for _ in range(repeat))
    wall = (time.perf_counter() - t_wall) / repeat
    table.add(
        "journal: append + fsync/1,024",
        ours_s,
        min(floor() for _ in range(repeat)),
        n,
        f"(wall incl. fsync {wall / n * 1e6:.1f} µs)",
    )


def stage_ingest(records: list[Any], repeat: int, tmp: Path, table: Table) -> None:
    n = len(records)

    def ours() -> float:
        directory = Path(tempfile.mkdtemp(dir=tmp))
        journal = Journal(directory, segment_bytes=64 << 20, fsync_interval=0.1, fsync_records=1000)
        log = HotLog("eu", journal, ReplayBuffer(200_000, 256 << 20), Metrics())
        log.open()
        t0 = time.process_time()
        for at in range(0, n, BATCH):
            log.append_local_batch(records[at : at + BATCH])
        spent = time.process_time() - t0
        log.close()
        return spent

    table.add("ingest: append_local_batch (no fsync)", min(ours() for _ in range(repeat)), None, n)


def stage_frames(hots: list[HotRecord], repeat: int, table: Table) -> list[bytes]:
    n = len(hots)
    frames: list[bytes] = []

    def ours() -> None:
        frames[:] = [
            protocol.encode_records("r", hots[i : i + FRAME], n) for i in range(0, n, FRAME)
        ]

    def floor() -> None:
        for i in range(0, n, FRAME):
            b"\n".join([h.line for h in hots[i : i + FRAME]])

    table.add(f"frame: encode_records ({FRAME:,})", best(repeat, ours), best(repeat, floor), n)
    return frames


def stage_peer(frames: list[bytes], repeat: int, tmp: Path, table: Table) -> list[list[bytes]]:
    n = sum(protocol.decode_records(f)[0].count for f in frames)
    checked: list[list[bytes]] = []

    def ours() -> None:
        checked.clear()
        for frame in frames:
            header, lines = protocol.decode_records(frame)
            checked.append(check_frame(lines, origin="eu", first_seq=header.first_seq).lines)

    decoder = msgspec.json.Decoder()

    def floor() -> None:
        for frame in frames:
            cut = frame.find(b"\n")
            decoder.decode(b"[" + frame[cut + 1 :].replace(b"\n", b",") + b"]")

    table.add(
        "peer: decode_records + check_frame",
        best(repeat, ours),
        best(repeat, floor),
        n,
        "(floor: one untyped msgspec decode)",
    )

    def journal() -> float:
        directory = Path(tempfile.mkdtemp(dir=tmp))
        j = Journal(directory, segment_bytes=64 << 20, fsync_interval=0.1, fsync_records=1000)
        j.recover(local_origin="us", tail_records=0, tail_bytes=0)

        async def go() -> float:
            t0 = time.process_time()
            for lines in checked:
                j.write_lines(lines)
                await j.sync()
            return time.process_time() - t0

        spent = asyncio.run(go())
        j.close()
        return spent

    table.add("peer: journal write_lines + fsync", min(journal() for _ in range(repeat)), None, n)
    return checked


def stage_staging(hots: list[HotRecord], repeat: int, tmp: Path, table: Table) -> None:
    import io

    import pyarrow.json as pj

    from cryptorun_daemon.hot.journal_columns import _PARSE

    path = tmp / "stage.jsonl"
    path.write_bytes(b"".join(h.line + b"\n" for h in hots))
    chunks = [data for _, _, data in iter_chunks(path, 0, None)]
    root = tmp / "root"

    def partition(dataset: str, venue: str, symbol: str, ts: int) -> Path:
        return root / dataset / venue / symbol / str(ts // 3_600_000_000_000)

    def ours() -> None:
        for data in chunks:
            staged = stage_groups(
                data, length_ns=600_000_000_000, partition_dir=partition, is_late=lambda w: False
            )
            assert staged is not None

    def floor() -> None:
        for data in chunks:
            pj.read_json(
                io.BytesIO(data),
                read_options=pj.ReadOptions(use_threads=False),
                parse_options=_PARSE,
            )

    table.add(
        "staging: stage_groups (4 MiB chunks)",
        best(repeat, ours),
        best(repeat, floor),
        len(hots),
        "(floor: Arrow JSON reader alone)",
    )


# ----------------------------------------------------------------- transports
_CHILD = r"""
import asyncio, pickle, resource, sys, time, json
kind, role, arg = sys.argv[1], sys.argv[2], sys.argv[3]

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

async def ws_server():
    import websockets
    frames = pickle.load(open(arg, "rb"))
    done = asyncio.Event()
    async def handler(ws):
        await ws.recv()
        c0, t0 = cpu(), time.perf_counter()
        for f in frames:
            await ws.send(f)
        await ws.recv()
        print(json.dumps({"cpu": cpu() - c0, "wall": time.perf_counter() - t0}), flush=True)
        done.set()
    async with websockets.serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as s:
        print(s.sockets[0].getsockname()[1], flush=True)
        await done.wait()

async def ws_client():
    import websockets
    async with websockets.connect(f"ws://127.0.0.1:{arg}", max_size=None, compression=None) as c:
        await c.send("go")
        c0, t0, n = cpu(), time.perf_counter(), 0
        total = int(sys.argv[4])
        while n < total:
            await c.recv(); n += 1
        out = {"cpu": cpu() - c0, "wall": time.perf_counter() - t0}
        await c.send("done")
        print(json.dumps(out), flush=True)

async def aio_server():
    from aiohttp import web
    frames = pickle.load(open(arg, "rb"))
    done = asyncio.Event()
    async def handler(request):
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        await ws.receive()
        c0, t0 = cpu(), time.perf_counter()
        for f in frames:
            await ws.send_bytes(f)
        await ws.receive()
        print(json.dumps({"cpu": cpu() - c0, "wall": time.perf_counter() - t0}), flush=True)
        done.set()
        return ws
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await done.wait()
    await runner.cleanup()

async def aio_client():
    import aiohttp
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{arg}/", max_msg_size=0, compress=0) as ws:
            await ws.send_str("go")
            c0, t0, n = cpu(), time.perf_counter(), 0
            total = int(sys.argv[4])
            while n < total:
                await ws.receive(); n += 1
            out = {"cpu": cpu() - c0, "wall": time.perf_counter() - t0}
            await ws.send_str("done")
            print(json.dumps(out), flush=True)

try:
    import uvloop
    run = uvloop.run
except ImportError:
    run = asyncio.run
run({"websockets": {"server": ws_server, "client": ws_client},
     "aiohttp": {"server": aio_server, "client": aio_client}}[kind][role]())
"""


def transport(kind: str, frames: list[bytes]) -> dict[str, float]:
    """Send ``frames`` from a server process to a client process; CPU and wall of each side."""
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as handle:
        pickle.dump(frames, handle)
    server = subprocess.Popen(
        [sys.executable, "-c", _CHILD, kind, "server", handle.name],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        client = subprocess.run(
            [sys.executable, "-c", _CHILD, kind, "client", port, str(len(frames))],
            capture_output=True,
            text=True,
            check=True,
        )
        sent = json.loads(server.stdout.readline())
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        os.unlink(handle.name)
    got = json.loads(client.stdout.strip().splitlines()[-1])
    return {"send_cpu": sent["cpu"], "recv_cpu": got["cpu"], "wall": got["wall"]}


def stage_transport(
    hots: list[HotRecord], repeat: int, table: Table
) -> dict[int, dict[str, float]]:
    n = len(hots)
    out: dict[int, dict[str, float]] = {}
    for per_frame in (FRAME, 256, 16):
        frames = [
            protocol.encode_records("r", hots[i : i + per_frame], n) for i in range(0, n, per_frame)
        ]
        runs: dict[str, dict[str, float]] = {}
        for kind in ("aiohttp", "websockets"):
            trials = [transport(kind, frames) for _ in range(repeat)]
            runs[kind] = {k: min(t[k] for t in trials) for k in trials[0]}
        a, w = runs["aiohttp"], runs["websockets"]
        table.add(
            f"send, {per_frame:,} records/frame",
            a["send_cpu"],
            w["send_cpu"],
            n,
            "(ours: aiohttp; floor: websockets)",
        )
        table.add(
            f"receive, {per_frame:,} records/frame",
            a["recv_cpu"],
            w["recv_cpu"],
            n,
            f"(wall: aiohttp {n / a['wall']:,.0f}/s, websockets {n / w['wall']:,.0f}/s)",
        )
        out[per_frame] = {
            "aiohttp_send": a["send_cpu"] / n,
            "aiohttp_recv": a["recv_cpu"] / n,
            "ws_send": w["send_cpu"] / n,
            "ws_recv": w["recv_cpu"] / n,
        }
    return out


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tune_gc()
    n = args.records - args.records % FRAME
    print(
        f"hot floor: {n:,} records, best of {args.repeat}, CPU time per record; "
        f"cpus {os.cpu_count()}; load {_load()}",
        flush=True,
    )
    table = Table()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        hots, records = stage_feed_and_encode(n, args.repeat, table)
        print(f"  (mean line {sum(len(h.line) + 1 for h in hots) / n:.0f} bytes)")
        stage_journal(hots, args.repeat, tmp, table)
        stage_ingest(records, args.repeat, tmp, table)
        frames = stage_frames(hots, args.repeat, table)
        stage_peer(frames, args.repeat, tmp, table)
        stage_staging(hots, args.repeat, tmp, table)
        wire = stage_transport(hots, args.repeat, table)
    us = {row[0]: (row[1], row[2]) for row in table.rows}
    w = wire[FRAME]
    # Per record, per process of hot_mirror's ingest run (A serves B and C; all stage).
    feed = us["feed: synthetic records"][0]
    ingest = us["ingest: append_local_batch (no fsync)"][0]
    # The fsync's CPU (a worker thread, mostly kernel time): journal with it minus without.
    journal_fsync = us["journal: append + fsync/1,024"][0] - us["journal: append, no fsync"][0]
    frame = us[f"frame: encode_records ({FRAME:,})"][0]
    check, check_floor = us["peer: decode_records + check_frame"]
    peer_journal = us["peer: journal write_lines + fsync"][0]
    staging, staging_floor = us["staging: stage_groups (4 MiB chunks)"]
    assert staging_floor is not None
    assert check_floor is not None
    origin = feed + ingest + journal_fsync + 2 * (frame + w["aiohttp_send"] * 1e6) + staging
    peer = w["aiohttp_recv"] * 1e6 + check + peer_journal + staging
    encode_floor = us["encode: record line (+HotRecord)"][1]
    journal_floor = us["journal: append + fsync/1,024"][1]
    assert encode_floor is not None
    assert journal_floor is not None
    # The floor origin: the same feed, a bare encode, a bare write + fsync, bare sends.
    origin_floor = feed + encode_floor + journal_floor + 2 * (w["ws_send"] * 1e6) + staging_floor
    peer_floor = w["ws_recv"] * 1e6 + check_floor + peer_journal + staging_floor
    print(
        f"\nper record, CPU µs: origin {origin:.1f} (floor {origin_floor:.1f}), "
        f"each subscriber {peer:.1f} (floor {peer_floor:.1f})"
    )
    total, total_floor = origin + 2 * peer, origin_floor + 2 * peer_floor
    print(
        f"origin + two subscribers on 2 cores: {total:.1f} µs/record -> ceiling "
        f"{2e6 / total:,.0f} records/s (origin alone on one core: {1e6 / origin:,.0f}/s); "
        f"with the floors {total_floor:.1f} µs -> {2e6 / total_floor:,.0f} records/s"
    )
    print(f"load {_load()}")


if __name__ == "__main__":
    main()
