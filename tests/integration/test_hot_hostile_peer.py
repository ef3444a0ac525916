"""A hostile or broken peer on the hot mirror: a fake origin speaking ``/v1/hot/stream``.

The fake peer is a real ``websockets`` server on 127.0.0.1 (an implementation
independent of ours) that the daemon's mirror client follows as configured
under ``[peers]``. It adopts the daemon as a new subscriber, then sends one
records frame whose first line is a good record and whose second line is bad
in one specific way. The daemon must write nothing of the frame, close the
stream with 1007, count the reason and reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from cryptorun_daemon.daemon import Daemon
from cryptorun_daemon.hot import protocol
from cryptorun_daemon.hot.component import HotComponent
from cryptorun_daemon.hot.record import encode_record
from tests.harness.daemons import free_port, run_daemon, two_regions
from tests.harness.wait import eventually

pytestmark = pytest.mark.slow

PEER, LOCAL = "eu-central", "us-east"
REPLID = "f" * 40
NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def trade(seq: int, **overrides: Any) -> dict[str, Any]:
    return {
        "ts": NS + seq,
        "venue": "kraken",
        "symbol": "BTC/USD",
        "side": "buy",
        "price": 100.5,
        "qty": 0.25,
        "trade_id": seq,
        "ingest_ts": NS + seq,
        **overrides,
    }


def line(seq: int, *, origin: str = PEER, dataset: str = "trade", **fields: Any) -> bytes:
    """A canonical record line, as the origin's encoder writes it."""
    return encode_record(origin, seq, NS + seq, dataset, trade(seq, **fields)).line


def frame(lines: list[bytes], first_seq: int = 1) -> bytes:
    """A records frame around arbitrary lines (the header itself is well formed)."""
    header = {
        "replid": REPLID,
        "first_seq": first_seq,
        "count": len(lines),
        "first_ingest_ns": NS,
        "last_ingest_ns": NS,
        "head_seq": first_seq + len(lines) - 1,
        "latest": [["kraken", "BTC/USD", NS]],
    }
    return b"R" + json.dumps(header).encode() + b"\n" + b"\n".join(lines)


GOOD = line(1)
# (bad second line of the frame, the reason the daemon must count)
BAD_LINES: dict[str, tuple[bytes, str]] = {
    "non_json": (b"this is not json", "line_not_json"),
    "empty": (b"", "line_not_json"),
    "nan": (line(2).replace(b"100.5", b"NaN"), "line_not_json"),
    "no_record_keys": (b'{"x":1}', "line_malformed"),
    "third_region_origin": (line(2, origin="ap-south"), "line_origin"),
    "forged_local_origin": (line(2, origin=LOCAL), "line_origin"),
    "control_line": (
        json.dumps({"ctl": "replid", "o": LOCAL, "r": "0" * 40, "s": 99}).encode(),
        "line_control",
    ),
    "seq_gap_inside_batch": (line(3), "line_seq"),
    # JSON keeps the last duplicate key; the journal reader goes by the line's prefix.
    "later_key_claims_local_origin": (line(2)[:-1] + b',"o":"us-east"}', "line_origin"),
    "prefix_claims_local_origin": (
        line(2, origin=LOCAL)[:-1] + b',"o":"eu-central"}',
        "line_malformed",
    ),
    "path_escaping_venue": (line(2, venue="../../../../escaped"), "line_path_segment"),
    "path_escaping_symbol": (line(2, symbol="../../x"), "line_path_segment"),
    "unknown_dataset": (line(2, dataset="candles"), "line_dataset"),
    "wrong_field_type": (line(2, price="cheap"), "line_field_type"),
    "venue_not_a_string": (line(2, venue=7), "line_field_type"),
}


@dataclass
class Connection:
    subscribe: dict[str, Any] | None = None
    close_code: int | None = None


@dataclass
class FakePeer:
    """Serves ``/v1/hot/stream`` for origin ``eu-central`` from a script.

    First connection: hello, a ``new_subscriber`` gap (the daemon adopts
    ``REPLID``), then — once :attr:`go` is set — ``bad_frame``. Later
    connections: hello only, then silence (a resumed, idle stream).
    """

    bad_frame: bytes
    port: int = field(default_factory=free_port)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    connections: list[Connection] = field(default_factory=list)

    async def handler(self, ws: ServerConnection) -> None:
        conn = Connection()
        first = not self.connections
        self.connections.append(conn)
        try:
            conn.subscribe = json.loads(await ws.recv())
            await ws.send(protocol.hello(PEER, REPLID, 2, 1))
            if first:
                await ws.send(protocol.gap(1, 1, REPLID, "new_subscriber"))
                await self.go.wait()
                await ws.send(self.bad_frame)
            async for _ in ws:  # the client's pings; we only wait for its close
                pass
        except ConnectionClosed:
            pass
        conn.close_code = ws.close_code


def hot(daemon: Daemon) -> HotComponent:
    component = daemon.ctx.components["hot"]
    assert isinstance(component, HotComponent)
    return component


def journal_bytes(daemon: Daemon) -> bytes:
    journal = hot(daemon).log.journal
    journal.flush()
    return b"".join(segment.path.read_bytes() for segment in journal.segments())


@contextlib.asynccontextmanager
async def follower_of(tmp_path: Path, peer: FakePeer) -> AsyncIterator[Daemon]:
    """Daemon ``us-east`` with the fake peer as its only ``[peers]`` entry."""
    _a, b = two_regions(tmp_path, names=(PEER, LOCAL))
    b.peers = {PEER: peer.port}
    b.sections["hot"] = {"heartbeat_interval": "200ms", "fsync_interval": "50ms"}
    async with (
        serve(peer.handler, "127.0.0.1", peer.port, ping_interval=None),
        run_daemon(b.write()) as daemon,
    ):
        yield daemon


@pytest.mark.parametrize("case", sorted(BAD_LINES))
async def test_bad_mirrored_line_writes_nothing_closes_1007_counts_and_reconnects(
    tmp_path: Path, case: str
) -> None:
    """A frame with one bad line (after a good one) leaves the journal byte-identical, is
    closed with 1007, raises cryptorun_hot_protocol_errors_total{reason} for that kind of
    line, and the client reconnects and resumes under the adopted replid from seq 1."""
    bad, reason = BAD_LINES[case]
    peer = FakePeer(frame([GOOD, bad]))
    async with follower_of(tmp_path, peer) as daemon:
        await eventually(lambda: hot(daemon).log.position(PEER) is not None, what="replid adopted")
        before = journal_bytes(daemon)
        peer.go.set()
        await eventually(lambda: len(peer.connections) >= 2, what="a second connection")
        await eventually(lambda: peer.connections[0].close_code is not None, what="first close")
        assert peer.connections[0].close_code == protocol.CLOSE_MALFORMED
        assert journal_bytes(daemon) == before, "a byte of a rejected frame reached the journal"
        position = hot(daemon).log.position(PEER)
        assert position is not None
        assert position.applied_seq == 0
        counted = daemon.metrics.registry.get_sample_value(
            "cryptorun_hot_protocol_errors_total", {"region": LOCAL, "reason": reason}
        )
        assert counted == 1
        await eventually(lambda: peer.connections[1].subscribe is not None, what="re-subscribe")
        assert peer.connections[1].subscribe == {
            "type": "subscribe",
            "origin": PEER,
            "replid": REPLID,
            "from_seq": 1,
        }
        assert not list(tmp_path.rglob("*escaped*"))


async def test_good_frame_from_the_fake_peer_is_applied(tmp_path: Path) -> None:
    """The control case: the same script with a valid second line is journaled as sent and
    freshness is tracked from the lines (so the bad-line tests fail for the line alone)."""
    second = line(2, symbol="ETH/USD")
    peer = FakePeer(frame([GOOD, second]))
    async with follower_of(tmp_path, peer) as daemon:
        await eventually(lambda: hot(daemon).log.position(PEER) is not None, what="replid adopted")
        before = journal_bytes(daemon)
        peer.go.set()
        await eventually(
            lambda: (p := hot(daemon).log.position(PEER)) is not None and p.applied_seq == 2,
            what="two records applied",
        )
        assert journal_bytes(daemon) == before + GOOD + b"\n" + second + b"\n"
        pairs = {(p["venue"], p["symbol"]) for p in hot(daemon).authority.status()["pairs"]}
        assert pairs == {("kraken", "BTC/USD"), ("kraken", "ETH/USD")}
        assert len(peer.connections) == 1
