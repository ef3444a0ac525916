"""The origin side of the hot mirror bounds what subscribers can make it hold.

Real daemon, real WebSockets on 127.0.0.1: a subscriber that stops answering
pings is dropped, and streams beyond ``hot.max_subscribers`` are refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.daemon import Daemon
from cryptorun_daemon.hot import protocol
from cryptorun_daemon.hot.component import HotComponent
from tests.harness.daemons import auth_headers, run_daemon, two_regions
from tests.harness.wait import eventually

pytestmark = pytest.mark.slow

ORIGIN = "eu-central"
FEED = {
    "kind": "synthetic",
    "name": "syn",
    "venue": "synthetic",
    "rate": 200.0,
    "seed": 3,
    "symbols": ["BTC/USD"],
    "book_depth": 3,
}


def hot(daemon: Daemon) -> HotComponent:
    component = daemon.ctx.components["hot"]
    assert isinstance(component, HotComponent)
    return component


def dropped(daemon: Daemon, reason: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "cryptorun_hot_subscribers_dropped_total", {"region": ORIGIN, "reason": reason}
    )
    return value or 0.0


@contextlib.asynccontextmanager
async def origin(tmp_path: Path, **hot_keys: Any) -> AsyncIterator[tuple[Daemon, str]]:
    """Region eu-central ingesting a synthetic feed; yields the daemon and its stream URL."""
    a, _b = two_regions(tmp_path)
    a.sections["hot"] = {"heartbeat_interval": "200ms", **hot_keys}
    a.feeds = [FEED]
    async with run_daemon(a.write()) as daemon:
        yield daemon, f"{a.base_url}/v1/hot/stream"


SUBSCRIBE = json.dumps({"type": "subscribe", "origin": ORIGIN, "replid": None, "from_seq": 1})


async def test_subscriber_that_stops_answering_pings_is_dropped(tmp_path: Path) -> None:
    """A subscriber that subscribes and then neither reads nor answers pings (a dead peer whose
    TCP connection never reset) is dropped after hot.subscriber_timeout: its stream leaves the
    origin's subscriber list and cryptorun_hot_subscribers_dropped_total{reason=ping_timeout}
    counts it."""
    async with (
        origin(tmp_path, subscriber_timeout="1s") as (daemon, url),
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers=auth_headers(), autoping=False) as ws,
    ):
        await ws.send_str(SUBSCRIBE)
        await eventually(lambda: len(hot(daemon).server.status()) == 1, what="subscribed")
        # From here on the client reads nothing, so no PONG ever goes back.
        await eventually(lambda: dropped(daemon, "ping_timeout") == 1, what="dropped")
        await eventually(lambda: not hot(daemon).server.status(), what="stream released")


async def test_streams_beyond_max_subscribers_are_refused_with_4429(tmp_path: Path) -> None:
    """With hot.max_subscribers = 1 a second stream is closed with 4429 and a reason naming
    the setting, counted as over_cap; the first keeps streaming, and once it leaves a new
    subscriber is served again."""
    async with (
        origin(tmp_path, max_subscribers=1) as (daemon, url),
        aiohttp.ClientSession() as session,
    ):
        async with session.ws_connect(url, headers=auth_headers()) as first:
            await first.send_str(SUBSCRIBE)
            hello = await first.receive(timeout=10)
            assert json.loads(hello.data)["type"] == "hello"
            async with session.ws_connect(url, headers=auth_headers()) as second:
                await second.send_str(SUBSCRIBE)
                closing = await second.receive(timeout=10)
                assert closing.type == aiohttp.WSMsgType.CLOSE
                assert second.close_code == protocol.CLOSE_TOO_MANY_SUBSCRIBERS
                assert "max_subscribers" in str(closing.extra)
            assert dropped(daemon, "over_cap") == 1
            assert not first.closed
            assert len(hot(daemon).server.status()) == 1
        await eventually(lambda: not hot(daemon).server.status(), what="first stream gone")
        async with session.ws_connect(url, headers=auth_headers()) as third:
            await third.send_str(SUBSCRIBE)
            hello = await third.receive(timeout=10)
            assert json.loads(hello.data)["type"] == "hello"
