"""One task per peer: follow that peer's own origin stream over ``/v1/hot/stream``.

The client subscribes only for ``origin = peer`` (so a region never re-mirrors
a mirrored record), resumes from the last applied seq + 1 after every
reconnect, and backs off exponentially with jitter between attempts. Frame
handling lives in :class:`~cryptorun_daemon.hot.follower.OriginFollower`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from cryptorun_daemon.errors import JournalUnavailableError, ProtocolError
from cryptorun_daemon.hot import protocol
from cryptorun_daemon.hot.follower import OriginFollower
from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.hot.mirror_client")
# Intervals of silence (no pong, heartbeat or records) after which a peer is presumed gone.
SILENCE_INTERVALS = 5
STABLE_AFTER = 10.0  # a connection that lived this long resets the backoff


class MirrorClient:
    """Connects to one peer and feeds its frames to an :class:`OriginFollower`.

    Error handling: connection failures, closes and protocol errors end the
    current connection (protocol errors are counted and closed with 1007);
    :meth:`run` then reconnects after ``min(backoff_max, backoff_base * 2**n)``
    seconds scaled by a random factor in [0.5, 1.0]. Resource handling: the
    WebSocket and the pinger task live inside one ``async with``; cancelling
    :meth:`run` closes both.
    """

    def __init__(
        self,
        follower: OriginFollower,
        *,
        base_url: str,
        session: Callable[[], aiohttp.ClientSession],
        headers: dict[str, str],
        metrics: Metrics,
        max_frame_bytes: int,
        ping_interval: float,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.follower = follower
        self.peer = follower.peer
        self.url = f"{base_url.rstrip('/')}/v1/hot/stream"
        self._session = session
        self._headers = headers
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.ping_interval = ping_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        region = follower.log.region
        self._reconnects = metrics.hot_reconnects_total.labels(region=region, origin=self.peer)
        self._protocol_errors = metrics.hot_protocol_errors_total
        self.connected = False
        self.stopped = False
        self.connections = 0
        self.last_error: str | None = None
        self.last_close_code: int | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def run(self) -> None:
        """Follow the peer until cancelled.

        Error handling: never returns on a network or protocol failure; it
        logs, counts a reconnect and retries with capped exponential backoff
        plus jitter. Resource handling: see the class docstring.
        """
        failures = 0
        while not self.stopped:
            started = time.monotonic()
            try:
                await self._connect_once()
                self.last_error = None
            # JournalUnavailableError: our disk refuses the peer's records for now;
            # reconnecting with backoff resumes from the last applied seq later.
            except (
                aiohttp.ClientError,
                OSError,
                TimeoutError,
                ProtocolError,
                JournalUnavailableError,
            ) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self.connected = False
                self._ws = None
            if self._stopping():
                return
            self.follower.on_disconnected()
            failures = 0 if time.monotonic() - started > STABLE_AFTER else failures + 1
            delay = min(self.backoff_max, self.backoff_base * 2 ** max(0, failures - 1))
            delay *= random.uniform(0.5, 1.0)
            self._reconnects.inc()
            log.info(
                "hot mirror reconnecting",
                peer=self.peer,
                delay=round(delay, 3),
                error=self.last_error,
                close_code=self.last_close_code,
            )
            await asyncio.sleep(delay)

    def _stopping(self) -> bool:
        # A method, not the attribute: stop() flips it while run() awaits.
        return self.stopped

    async def _connect_once(self) -> None:
        follower = self.follower
        async with self._session().ws_connect(
            self.url,
            headers=self._headers,
            max_msg_size=self.max_frame_bytes,
            autoping=True,
            heartbeat=None,
            compress=0,
            # The origin answers our pings and heartbeats every interval even when
            # idle; silence for several intervals means a dead path (no RST ever
            # came), so give up on it and reconnect instead of waiting for TCP.
            timeout=aiohttp.ClientWSTimeout(
                ws_close=2.0, ws_receive=max(3.0, SILENCE_INTERVALS * self.ping_interval)
            ),
        ) as ws:
            self._ws = ws
            await ws.send_str(follower.subscribe_request())
            self.connected = True
            self.connections += 1
            pinger = asyncio.create_task(self._ping(ws), name=f"hot-ping:{self.peer}")
            try:
                await self._receive(ws)
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                    await pinger
            self.last_close_code = ws.close_code

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        follower = self.follower
        async for msg in ws:
            try:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    resubscribe = follower.on_records(msg.data)
                    if resubscribe is not None:
                        await ws.send_str(resubscribe)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    follower.on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    too_big = isinstance(msg.data, aiohttp.WebSocketError) and (
                        msg.data.code == protocol.CLOSE_TOO_BIG
                    )
                    raise ProtocolError(
                        f"peer frame rejected: {msg.data}",
                        reason="oversized" if too_big else "malformed",
                    )
            except ProtocolError as exc:
                # Counted once, by the reason the check that failed gave (bounded set).
                self._count(exc.reason)
                log.warning(
                    "hot mirror frame refused", peer=self.peer, reason=exc.reason, error=str(exc)
                )
                await ws.close(code=protocol.CLOSE_MALFORMED, message=str(exc)[:120].encode())
                raise

    def _count(self, reason: str) -> None:
        self._protocol_errors.labels(region=self.follower.log.region, reason=reason).inc()

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send a timestamped ping each interval; the echo measures RTT and clock skew."""
        while not ws.closed:
            await ws.send_str(protocol.ping(time.time_ns()))
            await asyncio.sleep(self.ping_interval)

    async def drop_connection(self) -> None:
        """Abort the current connection (operator action and fault-injection hook)."""
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close(code=protocol.CLOSE_GOING_AWAY, message=b"connection dropped")

    async def close(self) -> None:
        """Close the stream with 1001 (daemon shutdown)."""
        await self.drop_connection()

    def status(self) -> dict[str, Any]:
        return {
            "peer_url": self.url,
            "connected": self.connected,
            "connections": self.connections,
            "last_error": self.last_error,
            "last_close_code": self.last_close_code,
            **self.follower.status(),
        }
