"""Hot tier end to end: two daemons mirroring over real WebSockets on 127.0.0.1.

Faults are injected with a real TCP proxy between the subscriber and the
origin (cut connections, outages), never by mocking our network code.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import pytest
from aiohttp import web

import cryptorun_daemon.components as components_module
from cryptorun_daemon.daemon import Daemon
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.component import HotComponent
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal, iter_lines
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.hot.mirror_server import MirrorServer
from cryptorun_daemon.metrics import Metrics
from tests.harness.admin import auth_headers
from tests.harness.daemons import RegionSpec, run_daemon, two_regions
from tests.harness.net import FaultProxy, free_port
from tests.harness.wait import eventually

pytestmark = pytest.mark.slow

HOT = {
    "buffer_records": 5000,
    "heartbeat_interval": "200ms",
    "fsync_interval": "50ms",
    "partition_length": "1h",
    "seal_grace": "30s",
    "max_frame_bytes": 65536,
}


def hot_factories() -> list[Any]:
    """HotComponent as an extra component unless ``build_components`` already wires it."""
    return [] if "HotComponent" in vars(components_module) else [HotComponent]


def hot(daemon: Daemon) -> HotComponent:
    component = daemon.ctx.components["hot"]
    assert isinstance(component, HotComponent)
    return component


def journal_lines(daemon: Daemon, origin: str) -> list[tuple[int, bytes]]:
    """(seq, line) of every record of ``origin`` in a daemon's journal, in file order."""
    component = hot(daemon)
    component.log.journal.flush()
    found = []
    for segment in component.log.journal.segments():
        for _, line in iter_lines(segment.path):
            if line.startswith(b'{"ctl"'):
                continue
            body = json.loads(line)
            if body["o"] == origin:
                found.append((body["s"], line))
    return found


def applied(daemon: Daemon, origin: str) -> int:
    position = hot(daemon).log.position(origin)
    return position.applied_seq if position else 0


def counter(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def synthetic(rate: float, venue: str = "synthetic", seed: int = 7) -> dict[str, Any]:
    return {
        "kind": "synthetic",
        "name": "syn",
        "venue": venue,
        "rate": rate,
        "seed": seed,
        "symbols": ["BTC/USD", "ETH/USD"],
        "book_depth": 5,
    }


@contextlib.asynccontextmanager
async def pair(
    tmp_path: Path,
    *,
    a_feeds: list[dict[str, Any]],
    b_feeds: list[dict[str, Any]] | None = None,
    hot_a: dict[str, Any] | None = None,
    proxy: bool = False,
) -> AsyncIterator[tuple[Daemon, Daemon, RegionSpec, RegionSpec, FaultProxy | None]]:
    """Origin A and subscriber B (B reaches A through a proxy when ``proxy``)."""
    a, b = two_regions(tmp_path)
    a.sections["hot"] = {**HOT, **(hot_a or {})}
    b.sections["hot"] = dict(HOT)
    a.feeds, b.feeds = a_feeds, b_feeds or []
    # A small buffer: when the relay is paused, the origin's socket backs up quickly.
    relay = FaultProxy(a.port, buffer=4096) if proxy else None
    if relay is not None:
        await relay.start()
        b.peers = {a.region: relay.port}
    a_path, b_path = a.write(), b.write()
    try:
        async with (
            run_daemon(a_path, extra_components=hot_factories()) as da,
            run_daemon(b_path, extra_components=hot_factories()) as db,
        ):
            yield da, db, a, b, relay
    finally:
        if relay is not None:
            await relay.close()


def assert_exact_prefix(origin: Daemon, subscriber: Daemon, name: str) -> int:
    """The subscriber holds origin's records 1..n once each, in order, byte-identical."""
    mine = dict(journal_lines(origin, name))
    theirs = journal_lines(subscriber, name)
    seqs = [seq for seq, _ in theirs]
    assert seqs == list(range(1, len(seqs) + 1)), "gaps, duplicates or reordering"
    assert all(line == mine[seq] for seq, line in theirs)
    return len(seqs)


async def test_steady_mirroring_delivers_every_record_once_in_order(tmp_path: Path) -> None:
    """Every record A ingests arrives at B exactly once, in seq order, byte-identical."""
    async with pair(tmp_path, a_feeds=[synthetic(400)]) as (da, db, a, _b, _):
        await eventually(lambda: applied(db, a.region) >= 600, what="600 records at B")
        count = assert_exact_prefix(da, db, a.region)
        assert count >= 600
        assert counter(db, "cryptorun_hot_duplicates_total", region="us-east", origin=a.region) == 0
        status = hot(db).status(tier="hot", region=None)["tiers"]["hot"]["stream"]
        assert status["origins"][a.region]["connected"] is True
        assert status["origins"][a.region]["replid"] == hot(da).log.replid


async def test_killed_connection_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    """Cutting the TCP connection mid-stream: B reconnects and resumes at last applied + 1."""
    async with pair(tmp_path, a_feeds=[synthetic(500)], proxy=True) as (da, db, a, _b, relay):
        assert relay is not None
        client = hot(db).clients[a.region]
        for round_ in range(3):
            target = applied(db, a.region) + 200
            await eventually(lambda t=target: applied(db, a.region) >= t, what="progress")
            relay.cut()
            await eventually(lambda r=round_: client.connections >= r + 2, what="reconnect")
        head = hot(da).log.seq
        await eventually(lambda: applied(db, a.region) >= head, what="catch up")
        assert assert_exact_prefix(da, db, a.region) >= head
        assert counter(db, "cryptorun_hot_reconnects_total", region="us-east", origin=a.region) >= 3
        assert counter(db, "cryptorun_hot_seq_gaps_total", region="us-east", origin=a.region) == 0


def gaps_counted(daemon: Daemon, origin: str) -> float:
    return counter(daemon, "cryptorun_hot_seq_gaps_total", region=hot(daemon).region, origin=origin)


async def test_outage_longer_than_buffer_resumes_from_the_journal_without_a_gap(
    tmp_path: Path,
) -> None:
    """B away while A ingests far more than its 100-record buffer holds (but A's journal keeps
    it all, across several segments): B resumes from A's journal and then its buffer, with
    every record exactly once, in order, byte-identical, and no gap recorded."""
    async with pair(
        tmp_path,
        a_feeds=[synthetic(1000)],
        proxy=True,
        hot_a={"buffer_records": 100, "segment_bytes": 65536},
    ) as (da, db, a, _b, relay):
        assert relay is not None
        await eventually(lambda: applied(db, a.region) >= 100, what="first records")
        relay.down()
        before = applied(db, a.region)
        await eventually(lambda: hot(da).log.seq > before + 1500, what="A ingests past buffer")
        buffer_first = hot(da).log.buffer.first_seq
        assert buffer_first is not None
        assert buffer_first > before + 1  # B's position really fell out of the buffer
        assert len(hot(da).log.journal.segments()) > 2
        relay.up = True
        head = hot(da).log.seq
        await eventually(lambda: applied(db, a.region) >= head, what="B catches up")
        assert assert_exact_prefix(da, db, a.region) >= head
        assert hot(db).clients[a.region].follower.status()["last_gap"] is None
        assert gaps_counted(db, a.region) == 0
        assert hot(da).server.backlog.journal_records_served >= buffer_first - before - 1


async def test_outage_longer_than_buffer_and_journal_is_an_explicit_counted_gap(
    tmp_path: Path,
) -> None:
    """When B is away until A has sealed and deleted the journal segments holding B's position
    (tiny segments, 1 s partitions), the range is gone from buffer and journal: B records an
    explicit evicted gap (status + metric) whose records are in neither, then continues."""
    sealing = {
        "buffer_records": 300,
        "segment_bytes": 4096,
        "partition_length": "1s",
        "seal_grace": "300ms",
    }
    async with pair(tmp_path, a_feeds=[synthetic(1000)], proxy=True, hot_a=sealing) as (
        da,
        db,
        a,
        _b,
        relay,
    ):
        assert relay is not None
        await eventually(lambda: applied(db, a.region) >= 100, what="first records")
        relay.down()
        before = applied(db, a.region)
        await eventually(
            lambda: hot(da).server.backlog.available_from() > before + 1,
            what="A seals and deletes the segments past B's position",
        )
        relay.up = True

        def last_gap() -> dict[str, Any] | None:
            status = hot(db).status(tier="hot", region=a.region)["tiers"]["hot"]["stream"]
            gap: dict[str, Any] | None = status["origins"][a.region]["last_gap"]
            return gap

        def resumed_past_the_gap() -> bool:
            # Recording the gap moves applied_seq to its end: wait for records after it.
            gap = last_gap()
            return gap is not None and applied(db, a.region) > gap["missing_to"] + 100

        await eventually(resumed_past_the_gap, "B resumes past the gap")
        gap = last_gap()
        assert gap is not None
        assert gap["reason"] == "evicted"
        assert gap["missing_from"] > before  # records in flight at the cut may still land
        assert gaps_counted(db, a.region) >= 1
        a_seqs = [s for s, _ in journal_lines(da, a.region)]
        assert min(a_seqs) > gap["missing_to"]  # the missing range is not in A's journal
        seqs = [s for s, _ in journal_lines(db, a.region)]
        held = gap["missing_from"] - 1
        assert len(seqs) == len(set(seqs))
        assert seqs[:held] == list(range(1, held + 1))
        assert seqs[held] == gap["missing_to"] + 1


async def test_origin_restart_keeps_replid_and_a_wiped_journal_is_a_gap(tmp_path: Path) -> None:
    """A clean restart of A keeps its replid and seq; a wiped journal gives a new replid and B
    records a replid_changed gap instead of silently starting over at seq 1."""
    a, b = two_regions(tmp_path)
    a.sections["hot"], b.sections["hot"] = dict(HOT), dict(HOT)
    a.feeds = [synthetic(300)]
    a_path, b_path = a.write(), b.write()
    async with run_daemon(b_path, extra_components=hot_factories()) as db:
        async with run_daemon(a_path, extra_components=hot_factories()) as da:
            await eventually(lambda: applied(db, a.region) >= 100, what="records at B")
            replid, seq_before = hot(da).log.replid, hot(da).log.seq
        async with run_daemon(a_path, extra_components=hot_factories()) as da:
            assert hot(da).log.replid == replid
            assert hot(da).log.seq >= seq_before
            await eventually(lambda: applied(db, a.region) > seq_before + 50, what="continues")
            assert assert_exact_prefix(da, db, a.region) > seq_before
        gaps_before = counter(db, "cryptorun_hot_seq_gaps_total", region="us-east", origin=a.region)
        shutil.rmtree(a.storage_root / "_state" / "hot" / "journal")
        async with run_daemon(a_path, extra_components=hot_factories()) as da:
            assert hot(da).log.replid != replid
            await eventually(
                lambda: (
                    hot(db).log.position(a.region).replid  # type: ignore[union-attr]
                    == hot(da).log.replid
                ),
                what="B adopts the new replid",
            )
            gap = hot(db).clients[a.region].follower.status()["last_gap"]
            assert gap["reason"] == "replid_changed"
            assert gap["replid"] == replid
            assert (
                counter(db, "cryptorun_hot_seq_gaps_total", region="us-east", origin=a.region)
                == gaps_before + 1
            )


async def test_slow_consumer_cannot_grow_origin_memory_and_catches_up_from_journal(
    tmp_path: Path,
) -> None:
    """A subscriber that stops reading never makes A queue records: A's buffer stays within its
    limits while the subscriber is stalled; once it reads again it is served from A's journal
    (one batch in flight, not a queue) and ends up with every record exactly once, no gap."""
    limits = {"buffer_records": 500, "buffer_bytes": 65536}
    feed = {**synthetic(3000), "book_depth": 100}
    async with pair(tmp_path, a_feeds=[feed], hot_a=limits, proxy=True) as (da, db, a, _b, relay):
        assert relay is not None
        await eventually(lambda: applied(db, a.region) >= 100, what="mirror flowing")
        relay.pause()
        start = hot(da).log.seq
        await eventually(lambda: hot(da).log.seq > start + 6000, what="A ingests while stalled")
        buffer = hot(da).log.buffer
        assert len(buffer) <= 500
        assert buffer.bytes <= 65536
        stalled_at = applied(db, a.region)
        assert stalled_at < start + 6000  # B really was stalled
        relay.resume()
        target = hot(da).log.seq
        # Generous: the catch-up shares one process (and, under coverage, a tracer) with
        # A's 3000 records/s feed; the bound is only when the test gives up.
        await eventually(lambda: applied(db, a.region) >= target, "B catches up", timeout=90)
        assert assert_exact_prefix(da, db, a.region) >= target
        assert gaps_counted(db, a.region) == 0
        assert hot(da).server.backlog.journal_records_served > 0
        assert len(buffer) <= 500
        assert buffer.bytes <= 65536


async def test_active_active_records_never_ping_pong(tmp_path: Path) -> None:
    """Both regions ingest; each holds the other's records once and never re-serves them."""
    async with pair(
        tmp_path,
        a_feeds=[synthetic(300, venue="venue-a")],
        b_feeds=[synthetic(300, venue="venue-b")],
    ) as (da, db, a, b, _):
        await eventually(
            lambda: applied(db, a.region) >= 300 and applied(da, b.region) >= 300,
            what="both directions flowing",
        )
        assert_exact_prefix(da, db, a.region)
        assert_exact_prefix(db, da, b.region)
        # Each region's own stream holds only records it ingested itself.
        for daemon, region in ((da, a.region), (db, b.region)):
            for segment in hot(daemon).log.journal.segments():
                for _, line in iter_lines(segment.path):
                    body = json.loads(line)
                    if "ctl" not in body and body["o"] == region:
                        assert body["f"]["venue"] == (
                            "venue-a" if region == a.region else "venue-b"
                        )
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{a.base_url}/v1/hot/stream", headers=auth_headers()) as ws,
        ):
            await ws.send_str(json.dumps({"origin": b.region, "replid": None, "from_seq": 1}))
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4404


async def _close_code(
    url: str, send: Callable[[aiohttp.ClientWebSocketResponse], Awaitable[None]]
) -> int | None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=auth_headers(), max_msg_size=0) as ws,
    ):
        await send(ws)
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return ws.close_code


async def test_bad_frames_close_with_clear_codes_and_server_keeps_serving(tmp_path: Path) -> None:
    """Malformed, oversized and bad subscribe frames close that connection with a specific code
    and a counted error; the mirror to B keeps flowing; no token is refused with 401."""
    async with pair(tmp_path, a_feeds=[synthetic(300)]) as (da, db, a, b, _):
        url = f"{a.base_url}/v1/hot/stream"
        await eventually(lambda: applied(db, a.region) >= 50, what="mirror flowing")

        async def bad_json(ws: aiohttp.ClientWebSocketResponse) -> None:
            await ws.send_str("{not json")

        async def missing_seq(ws: aiohttp.ClientWebSocketResponse) -> None:
            await ws.send_str(json.dumps({"origin": a.region, "replid": None}))

        async def binary(ws: aiohttp.ClientWebSocketResponse) -> None:
            await ws.send_bytes(b"\x00\x01garbage")

        async def oversized(ws: aiohttp.ClientWebSocketResponse) -> None:
            await ws.send_str("x" * 200_000)

        async def garbage_after_subscribe(ws: aiohttp.ClientWebSocketResponse) -> None:
            await ws.send_str(json.dumps({"origin": a.region, "replid": None, "from_seq": 1}))
            await ws.send_str("[1, 2")

        assert await _close_code(url, bad_json) == 4400
        assert await _close_code(url, missing_seq) == 4400
        assert await _close_code(url, binary) == 1007
        assert await _close_code(url, oversized) == 1009
        assert await _close_code(url, garbage_after_subscribe) == 1007
        for reason, at_least in (("bad_subscribe", 2), ("malformed", 2), ("oversized", 1)):
            assert (
                counter(da, "cryptorun_hot_protocol_errors_total", region=a.region, reason=reason)
                >= at_least
            )
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 401
        mark = applied(db, a.region)
        await eventually(lambda: applied(db, a.region) > mark + 100, what="mirror still flowing")
        # B's own stream was never closed for a protocol error (a reconnect after a stall
        # on a loaded machine would be legitimate, so the connection count is not pinned).
        assert hot(db).clients[a.region].last_close_code not in {1007, 1009, 4400}
        assert not any(
            counter(db, "cryptorun_hot_protocol_errors_total", region=b.region, reason=r)
            for r in ("bad_subscribe", "malformed", "oversized")
        )


async def test_stream_is_refused_until_the_hot_log_has_recovered(tmp_path: Path) -> None:
    """The admin server is up before the hot log has recovered its replid and seq: until then
    /v1/hot/stream answers 503 (the client backs off and retries) instead of announcing an
    empty replid; once the log is open the same request gets a hello with the real replid."""
    hot_log = HotLog(
        "eu",
        Journal(tmp_path, segment_bytes=1 << 20, fsync_interval=1, fsync_records=100),
        ReplayBuffer(10, 1 << 20),
        Metrics(),
    )
    server = MirrorServer(hot_log, hot_log.metrics, heartbeat_interval=0.2, max_frame_bytes=65536)
    app = web.Application()
    app.router.add_get("/v1/hot/stream", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/v1/hot/stream"
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url)
            assert refused.value.status == 503
            hot_log.open()
            async with session.ws_connect(url) as ws:
                await ws.send_str(json.dumps({"origin": "eu", "replid": None, "from_seq": 1}))
                hello = json.loads((await ws.receive(timeout=10)).data)
                assert (hello["type"], hello["replid"]) == ("hello", hot_log.replid)
                assert len(hot_log.replid) == 40
    finally:
        await server.close_all()
        await runner.cleanup()
        hot_log.close()


def _trade(
    start_ns: int, trade_id: int, *, side: str = "buy", price: float | None = None, qty: float = 1.0
) -> dict[str, Any]:
    return {
        "ts": start_ns + trade_id,
        "venue": "kraken",
        "symbol": "BTC/USD",
        "side": side,
        "price": 100.0 + trade_id if price is None else price,
        "qty": qty,
        "trade_id": trade_id,
    }


def _replay_file(path: Path, start_ns: int) -> None:
    """Trades 1..40 at ``start_ns``, replayed right away."""
    lines = [
        {"recv_ns": 0, "dataset": "trade", "fields": _trade(start_ns, trade_id)}
        for trade_id in range(1, 41)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


async def test_sealing_dedupes_trades_across_sources_and_keeps_late_records(
    tmp_path: Path,
) -> None:
    """Both regions ingest the same 40 trades; A (warm primary) seals the closed window with
    each trade once; trades that arrive after the seal land in a late-fill file, counted."""
    start = time.time_ns()
    _replay_file(tmp_path / "a.jsonl", start)
    _replay_file(tmp_path / "b.jsonl", start)
    sealing = {"partition_length": "1s", "seal_grace": "300ms"}
    a, b = two_regions(tmp_path)
    a.sections["hot"] = {**HOT, **sealing}
    b.sections["hot"] = {**HOT, **sealing}
    for spec, name in ((a, "a.jsonl"), (b, "b.jsonl")):
        spec.feeds = [
            {
                "kind": "replay",
                "name": "rec",
                "venue": "kraken",
                "symbols": ["BTC/USD"],
                "path": str(tmp_path / name),
            }
        ]
    async with (
        run_daemon(a.write(), extra_components=hot_factories()) as da,
        run_daemon(b.write(), extra_components=hot_factories()) as db,
    ):
        await eventually(lambda: applied(da, b.region) >= 40, what="B's trades at A")
        sealer = hot(da).sealer
        window = start // 1_000_000_000 * 1_000_000_000
        await eventually(lambda: window in sealer.sealed, timeout=30, what="the window sealed")
        # Ingested after the seal, for the sealed window: two new trades and a duplicate.
        for late in (
            _trade(start, 1000, side="sell", price=99.0, qty=2.0),
            _trade(start, 1001, side="sell", price=99.0, qty=2.0),
            _trade(start, 5),
        ):
            assert hot(da).log.append_local(MarketRecord("trade", late)) is not None
        await eventually(
            lambda: counter(da, "cryptorun_hot_late_records_total", region=a.region) >= 2,
            timeout=30,
            what="late fill",
        )
        partitions = list((a.storage_root / "warm" / "trade").rglob("_SUCCESS"))
        assert len(partitions) == 1
        directory = partitions[0].parent
        parts = sorted(p.name for p in directory.glob("part-*.parquet"))
        late_files = sorted(p.name for p in directory.glob("late-fill-*.parquet"))
        assert parts
        assert late_files
        ids = pq.read_table(directory / parts[0]).column("trade_id").to_pylist()
        assert sorted(ids) == list(range(1, 41))
        late_ids = pq.read_table(directory / late_files[0]).column("trade_id").to_pylist()
        assert sorted(late_ids) == [1000, 1001]  # 5 was already sealed: a duplicate, not late
        manifest = json.loads((directory / "_manifest.json").read_text())
        assert {s["source"] for s in manifest["sources"]} >= {a.region}
        assert manifest["worst_freshness_seconds"] is not None
        assert counter(da, "cryptorun_hot_late_records_total", region=a.region) == 2
        assert sealer.late_total == 2
        # The replica seals nothing itself: whatever it holds is A's file, replicated (the
        # change feed brings A's seal over within a second).
        for copy in (b.storage_root / "warm").rglob("*.parquet"):
            original = a.storage_root / copy.relative_to(b.storage_root)
            assert original.read_bytes() == copy.read_bytes(), copy
        del db


async def test_silent_peer_is_presumed_gone_and_lag_keeps_growing(tmp_path: Path) -> None:
    """A path that goes silent without a reset (nothing arrives, nothing closes) is abandoned
    after a few heartbeat intervals: B reconnects instead of waiting for TCP, reports a growing
    hot lag while it hears nothing, and resumes without loss once the path is back."""
    async with pair(tmp_path, a_feeds=[synthetic(200)], proxy=True) as (da, db, a, _b, relay):
        assert relay is not None
        client = hot(db).clients[a.region]
        await eventually(lambda: applied(db, a.region) >= 100, what="progress")
        connections = client.connections
        relay.pause()  # origin → subscriber frames stop; the TCP connection stays open
        await eventually(
            lambda: client.connections > connections or not client.connected,
            timeout=30,
            what="silence detected",
        )
        lag = "cryptorun_replication_lag_seconds"
        await eventually(
            lambda: counter(db, lag, tier="hot", region="us-east", source=a.region) > 1.0,
            timeout=30,
            what="lag grows",
        )
        relay.resume()
        head = hot(da).log.seq
        await eventually(lambda: applied(db, a.region) >= head, timeout=30, what="catch up")
        assert assert_exact_prefix(da, db, a.region) >= head
