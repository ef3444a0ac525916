"""Serves this region's own hot stream to peers over ``GET /v1/hot/stream``.

Each subscriber is a cursor into the backlog (``backlog``): the replay buffer
while the cursor is inside it, the journal segments when it fell behind the
buffer. It is never a queue: one batch is in flight per subscriber, so slow
consumers cannot grow the origin's memory. Only a range gone from both buffer
and journal (segments deleted after sealing) gives an explicit ``gap`` frame,
after which streaming continues from the oldest record still held. Only the
local origin is served; asking for any other origin closes with 4404, which is
what makes active-active mirroring loop-free.

Peers cannot make the origin hold more than it chose to: at most
``max_subscribers`` streams are open at once (the next one is closed with
4429 and counted), and a subscriber that sends nothing — not even a pong to
the WebSocket pings sent after two thirds of ``subscriber_timeout`` of silence
— is dropped once ``subscriber_timeout`` has passed, its socket aborted
rather than left to drain into a peer that no longer reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from cryptorun_daemon.errors import ProtocolError
from cryptorun_daemon.hot import protocol
from cryptorun_daemon.hot.backlog import Backlog, Cursor
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.hot.mirror_server")
SUBSCRIBE_TIMEOUT = 10.0


@dataclass
class Subscriber:
    """One connected peer: where its cursor is and what it asked for."""

    remote: str
    from_seq: int = 0
    cursor: int = 0
    source: str = "buffer"
    journal_records: int = 0
    echo: int | None = None
    resubscribe: int | None = None
    gaps_sent: int = 0
    timed_out: bool = False


class MirrorServer:
    """The WebSocket handler plus the set of open streams (closed with 1001 on stop).

    Error handling: a bad first message, a binary or malformed frame from a
    subscriber, or an oversized frame closes that one connection with a
    specific code and counts ``cryptorun_hot_protocol_errors_total{reason}``;
    other subscribers are unaffected. Resource handling: every accepted socket
    is tracked until its handler returns; :meth:`close_all` closes them; at
    most ``max_subscribers`` are open; a silent one is dropped after
    ``subscriber_timeout`` (module docstring), counted in
    ``cryptorun_hot_subscribers_dropped_total{reason}``.
    """

    def __init__(
        self,
        hot_log: HotLog,
        metrics: Metrics,
        *,
        heartbeat_interval: float,
        max_frame_bytes: int,
        batch_records: int = 4096,
        max_subscribers: int = 16,
        subscriber_timeout: float = 15.0,
    ) -> None:
        self.log = hot_log
        self.max_subscribers = max_subscribers
        self.subscriber_timeout = subscriber_timeout
        self.metrics = metrics
        self.heartbeat_interval = heartbeat_interval
        self.max_frame_bytes = max_frame_bytes
        self.batch_records = batch_records
        # Leave room for the header so a full batch never trips the peer's frame limit.
        self.batch_bytes = max(1024, min(1 << 20, max_frame_bytes // 2))
        self.backlog = Backlog(hot_log)
        self._sockets: dict[web.WebSocketResponse, Subscriber] = {}
        self._closing = False

    def _error(self, reason: str) -> None:
        self.metrics.hot_protocol_errors_total.labels(region=self.log.region, reason=reason).inc()

    def _dropped(self, reason: str) -> None:
        labels = {"region": self.log.region, "reason": reason}
        self.metrics.hot_subscribers_dropped_total.labels(**labels).inc()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/hot/stream``: upgrade, read the subscribe request, stream.

        Error handling: see the class docstring; connection resets end the
        handler quietly. Resource handling: the writer task is cancelled and
        awaited before the handler returns.
        """
        if self._closing:
            raise web.HTTPServiceUnavailable(text="daemon is shutting down")
        if not self.log.opened:
            # The admin server starts before the hot log has recovered its replid and seq;
            # a hello sent now would announce an empty replid. The client retries.
            raise web.HTTPServiceUnavailable(text="hot log is still recovering")
        ws = web.WebSocketResponse(
            max_msg_size=self.max_frame_bytes,
            compress=False,
            autoping=True,
            # aiohttp pings after this much silence and gives up when no pong came
            # within half of it: 2/3 + 1/3 of subscriber_timeout in all.
            heartbeat=self.subscriber_timeout * 2 / 3,
        )
        await ws.prepare(request)
        if len(self._sockets) >= self.max_subscribers:
            self._dropped("over_cap")
            log.warning("hot stream refused: subscriber cap", remote=request.remote)
            reason = f"too many subscribers (hot.max_subscribers={self.max_subscribers})"
            await ws.close(code=protocol.CLOSE_TOO_MANY_SUBSCRIBERS, message=reason.encode())
            return ws
        subscriber = Subscriber(remote=request.remote or "?")
        self._sockets[ws] = subscriber
        try:
            request_msg = await self._read_subscribe(ws, subscriber)
            if request_msg is not None:
                await self._stream(ws, subscriber, request_msg)
        finally:
            self._sockets.pop(ws, None)
            if subscriber.timed_out and request.transport is not None:
                # A close would wait for buffered frames to drain into a peer that no
                # longer reads; abort frees the socket and its buffer now.
                request.transport.abort()
            elif not ws.closed:
                await ws.close()
        return ws

    async def _read_subscribe(
        self, ws: web.WebSocketResponse, sub: Subscriber
    ) -> protocol.Subscribe | None:
        try:
            msg = await ws.receive(timeout=SUBSCRIBE_TIMEOUT)
        except TimeoutError:
            self._error("subscribe_timeout")
            await ws.close(code=protocol.CLOSE_BAD_SUBSCRIBE, message=b"no subscribe request")
            return None
        if msg.type != aiohttp.WSMsgType.TEXT:
            await self._reject_frame(ws, sub, msg)
            return None
        try:
            request = protocol.parse_subscribe(protocol.parse_text(msg.data))
        except ProtocolError as exc:
            self._error("bad_subscribe")
            await ws.close(code=protocol.CLOSE_BAD_SUBSCRIBE, message=str(exc)[:120].encode())
            return None
        if request.origin != self.log.region:
            # Cycle prevention: a region serves only records it ingested itself.
            self._error("wrong_origin")
            await ws.close(
                code=protocol.CLOSE_WRONG_ORIGIN,
                message=f"this daemon serves origin {self.log.region} only".encode(),
            )
            return None
        return request

    async def _reject_frame(
        self, ws: web.WebSocketResponse, sub: Subscriber, msg: aiohttp.WSMessage
    ) -> None:
        """Close on an unacceptable frame; a peer's own close is not an error.

        An ``ERROR`` carrying a timeout is aiohttp's heartbeat giving up on a
        subscriber that answered no ping: counted as a drop, not a protocol error.
        """
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            return
        if msg.type == aiohttp.WSMsgType.ERROR and isinstance(msg.data, TimeoutError):
            sub.timed_out = True
            self._dropped("ping_timeout")
            log.warning("hot stream subscriber timed out", remote=sub.remote, error=str(msg.data))
            return
        if msg.type == aiohttp.WSMsgType.ERROR:
            too_big = isinstance(msg.data, aiohttp.WebSocketError) and (
                msg.data.code == protocol.CLOSE_TOO_BIG
            )
            self._error("oversized" if too_big else "malformed")
            # aiohttp already closed with 1009/1002 when it raised the error.
            return
        self._error("malformed")
        await ws.close(code=protocol.CLOSE_MALFORMED, message=b"unexpected frame")

    async def _stream(
        self, ws: web.WebSocketResponse, sub: Subscriber, request: protocol.Subscribe
    ) -> None:
        sub.from_seq = request.from_seq
        wake = self.log.waiter()
        writer = asyncio.create_task(
            self._write_then_close(ws, sub, request, wake), name="hot-stream-writer"
        )
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    await self._reject_frame(ws, sub, msg)
                    break
                try:
                    body = protocol.parse_text(msg.data)
                    kind = body.get("type")
                    if kind == "ping" and isinstance(body.get("t"), int):
                        sub.echo = body["t"]
                    elif kind == "subscribe":
                        again = protocol.parse_subscribe(body)
                        if again.origin != self.log.region:
                            raise ProtocolError("re-subscribe for another origin")
                        sub.resubscribe = again.from_seq
                    else:
                        raise ProtocolError(f"unexpected message type {kind!r}")
                except ProtocolError as exc:
                    self._error("malformed")
                    await ws.close(code=protocol.CLOSE_MALFORMED, message=str(exc)[:120].encode())
                    break
                wake.set()
                if writer.done():
                    break
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await writer
            self.log.drop_waiter(wake)

    async def _write_then_close(
        self,
        ws: web.WebSocketResponse,
        sub: Subscriber,
        request: protocol.Subscribe,
        wake: asyncio.Event,
    ) -> None:
        """Run the writer; if it stops on its own (send failed), close so the reader ends too."""
        try:
            await self._write(ws, sub, request, wake)
        except (ConnectionError, RuntimeError) as exc:
            log.info("hot stream subscriber dropped", remote=sub.remote, error=str(exc))
        if not ws.closed:
            await ws.close(code=protocol.CLOSE_GOING_AWAY)

    async def _write(
        self,
        ws: web.WebSocketResponse,
        sub: Subscriber,
        request: protocol.Subscribe,
        wake: asyncio.Event,
    ) -> None:
        """Send hello, any gap, then records as they arrive, heartbeats when idle.

        Error handling: a send on a closed socket ends the writer; the reader
        then sees the close. Resource handling: owned and cancelled by ``_stream``.
        """
        hot, backlog = self.log, self.backlog
        await ws.send_str(protocol.hello(hot.region, hot.replid, hot.seq, backlog.available_from()))
        cursor = Cursor(await self._position(ws, sub, request.replid, request.from_seq))
        last_beat = time.monotonic()
        while not ws.closed:
            wake.clear()
            if sub.resubscribe is not None:
                cursor = Cursor(await self._position(ws, sub, hot.replid, sub.resubscribe))
                sub.resubscribe = None
            batch = await backlog.read(
                cursor, max_records=self.batch_records, max_bytes=self.batch_bytes
            )
            if batch.gap_to is not None:
                # The range is gone from buffer and journal: explicit gap, never a queue.
                sub.gaps_sent += 1
                await ws.send_str(protocol.gap(cursor.seq, batch.gap_to, hot.replid, "evicted"))
                cursor.seq = batch.gap_to
            records, run = batch.records, batch.run
            if records:
                await ws.send_bytes(protocol.encode_records(hot.replid, records, hot.seq))
                cursor.seq = records[-1].seq + 1
            elif run is not None:
                # Catch-up from segments: the lines' bytes as read, never decoded.
                frame = protocol.encode_run(
                    hot.replid,
                    run.first_seq,
                    run.count,
                    run.body,
                    first_ingest_ns=run.first_ingest_ns,
                    last_ingest_ns=run.last_ingest_ns,
                    head_seq=hot.seq,
                    latest=[],
                )
                await ws.send_bytes(frame)
                cursor.seq = run.last_seq + 1
            sub.cursor, sub.source = cursor.seq, cursor.source
            sub.journal_records = cursor.journal_records
            now = time.monotonic()
            if sub.echo is not None or now - last_beat >= self.heartbeat_interval:
                echo, sub.echo = sub.echo, None
                await ws.send_str(protocol.heartbeat(time.time_ns(), hot.seq, echo))
                last_beat = now
            if records or run is not None or batch.gap_to is not None:
                # More may be ready at once; a send that did not block never yielded, so
                # yield here or a catch-up drain would starve ingest and other streams.
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.heartbeat_interval)

    async def _position(
        self, ws: web.WebSocketResponse, sub: Subscriber, replid: str | None, from_seq: int
    ) -> int:
        """Where to start streaming for a (replid, from_seq) request; sends a gap if needed.

        Partial resync when the replid matches and ``from_seq`` is still in the
        buffer or the journal, or is the next seq; otherwise an explicit gap
        naming ``available_from``.
        """
        hot = self.log
        available = self.backlog.available_from()
        if replid == hot.replid and available <= from_seq <= hot.seq + 1:
            return from_seq
        if replid != hot.replid:
            reason = "new_subscriber" if replid is None else "replid_changed"
        else:
            reason = "ahead_of_origin" if from_seq > hot.seq + 1 else "evicted"
        sub.gaps_sent += 1
        await ws.send_str(protocol.gap(from_seq, available, hot.replid, reason))
        return available

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "remote": s.remote,
                "from_seq": s.from_seq,
                "cursor": s.cursor,
                "source": s.source,
                "journal_records": s.journal_records,
                "gaps_sent": s.gaps_sent,
            }
            for s in self._sockets.values()
        ]

    async def close_all(self) -> None:
        """Refuse new streams and close open ones with 1001 (going away)."""
        self._closing = True
        sockets = list(self._sockets)
        await asyncio.gather(
            *(
                ws.close(code=protocol.CLOSE_GOING_AWAY, message=b"daemon shutting down")
                for ws in sockets
            ),
            return_exceptions=True,
        )
