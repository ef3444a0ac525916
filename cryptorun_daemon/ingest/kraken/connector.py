"""The Kraken WebSocket v2 :class:`~cryptorun_daemon.hot.feed.Feed`: connections only.

:class:`KrakenFeed` opens the WebSocket, watches its health and reconnects
forever; everything about the protocol itself (subscriptions, books, trade
ids, normalisation) lives in :class:`~.handler.KrakenHandler`.

Health: any frame (market data, ``heartbeat``, ``pong``…) proves the
connection alive. Kraken sends a heartbeat about once a second when nothing
else is flowing, so after half of ``heartbeat_timeout`` of silence the feed
sends an application-level ``ping`` as a probe, and after a full
``heartbeat_timeout`` it gives up on the connection and reconnects.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from cryptorun_daemon.config.model import FeedConfig
from cryptorun_daemon.errors import IngestError
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.ingest.kraken.handler import KrakenHandler
from cryptorun_daemon.ingest.kraken.messages import BOOK_DEPTHS, ping_request
from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.ingest.kraken")

DEFAULT_URL: Final = "wss://ws.kraken.com/v2"
ReconnectCause = Literal["timeout", "closed", "error", "refused"]
RECONNECT_CAUSES: Final[tuple[ReconnectCause, ...]] = ("timeout", "closed", "error", "refused")
# Kraken's instrument snapshot lists every pair on the exchange; 1 MiB (the
# websockets default) is too tight for it.
MAX_FRAME_BYTES: Final = 16 << 20


class _SilenceTimeout(Exception):
    """No frame at all within ``heartbeat_timeout``."""


class KrakenFeed:
    """Trades and checksummed books for the configured symbols from Kraken v2.

    Error handling: a refused connection, a closed connection, an exception
    while connected and ``heartbeat_timeout`` of silence all end the current
    connection, count ``cryptorun_ingest_reconnects_total{cause}`` and lead to a
    reconnect after a capped exponential backoff with ±20 % jitter, forever;
    the backoff restarts from ``backoff_initial`` once a connection has
    delivered market data. Only an invalid configuration raises
    (:class:`~cryptorun_daemon.errors.IngestError`, from the constructor).
    Resource handling: the iterator returned by :meth:`records` holds at most
    one connection; closing the iterator (``aclose``) or cancelling its
    consumer closes it.
    """

    def __init__(
        self,
        config: FeedConfig,
        metrics: Metrics,
        *,
        url: str | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
    ) -> None:
        self.name = config.name
        self.venue = config.venue
        self.url = url or config.url or DEFAULT_URL
        problems = []
        if urlsplit(self.url).scheme not in ("ws", "wss"):
            problems.append(f"url {self.url!r} must start with ws:// or wss://")
        if config.book_depth not in BOOK_DEPTHS:
            problems.append(f"book_depth {config.book_depth} is not one of {BOOK_DEPTHS}")
        if not config.symbols:
            problems.append("no symbols to subscribe")
        if config.heartbeat_timeout <= 0:
            problems.append("heartbeat_timeout must be positive")
        if not 0 < backoff_initial <= backoff_max:
            problems.append("backoff must satisfy 0 < backoff_initial <= backoff_max")
        if problems:
            raise IngestError(f"feed {config.name!r}: " + "; ".join(problems))
        self._heartbeat_timeout = config.heartbeat_timeout
        self._clock_ns = clock_ns
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._metrics = metrics
        self._handler = KrakenHandler(
            venue=config.venue, symbols=config.symbols, depth=config.book_depth, metrics=metrics
        )
        self._connected = False
        self._connections = 0
        self._reconnects: dict[str, int] = dict.fromkeys(RECONNECT_CAUSES, 0)
        self._last_error: str | None = None
        self._ping_ids = 0
        self._iterating = False
        for cause in RECONNECT_CAUSES:
            metrics.ingest_reconnects_total.labels(venue=self.venue, cause=cause)

    async def records(self) -> AsyncGenerator[MarketRecord, None]:
        """Yield normalised ``trade`` and ``book`` records until closed.

        Error handling: see the class docstring; this iterator never ends and
        never raises on its own, except ``RuntimeError`` if a second iteration
        is started while one is running (both would share one protocol state).
        Resource handling: the current connection is closed when the iterator
        is closed (``aclose``) or its consumer cancelled.
        """
        if self._iterating:
            raise RuntimeError(f"feed {self.name!r}: records() is already being iterated")
        self._iterating = True
        try:
            # aclosing: closing us must close the inner generator (and its socket) now.
            async with aclosing(self._reconnect_forever()) as stream:
                async for record in stream:
                    yield record
        finally:
            self._iterating = False

    async def _reconnect_forever(self) -> AsyncGenerator[MarketRecord, None]:
        failures = 0
        while True:
            cause: ReconnectCause
            try:
                ws = await connect(
                    self.url,
                    open_timeout=self._open_timeout,
                    close_timeout=self._close_timeout,
                    max_size=MAX_FRAME_BYTES,
                )
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                cause, self._last_error = "refused", _describe(exc)
            except Exception as exc:
                log.error("kraken connect failed unexpectedly", feed=self.name, exc_info=True)
                cause, self._last_error = "error", _describe(exc)
            else:
                self._connections += 1
                self._connected = True
                log.info("kraken connected", feed=self.name, url=self.url)
                try:
                    async with aclosing(self._session(ws)) as session:
                        async for record in session:
                            yield record
                    cause = "closed"  # a session only ends by raising; never seen in practice
                except _SilenceTimeout:
                    cause = "timeout"
                    self._last_error = f"no message for {self._heartbeat_timeout} s"
                except ConnectionClosed as exc:
                    cause, self._last_error = "closed", _describe(exc)
                except Exception as exc:
                    log.error("kraken session failed", feed=self.name, exc_info=True)
                    cause, self._last_error = "error", _describe(exc)
                finally:
                    self._connected = False
                    # Also runs when the consumer closes us: release the socket.
                    await ws.close()
                if self._handler.market_data_seen:
                    failures = 0
            failures += 1
            self._reconnects[cause] += 1
            self._metrics.ingest_reconnects_total.labels(venue=self.venue, cause=cause).inc()
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (failures - 1))
            delay *= random.uniform(0.8, 1.2)
            log.warning(
                "kraken connection lost; reconnecting",
                feed=self.name,
                cause=cause,
                error=self._last_error,
                backoff_seconds=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection) -> AsyncGenerator[MarketRecord, None]:
        """Run one connection: subscribe, then turn frames into records.

        Error handling: raises :class:`_SilenceTimeout` after
        ``heartbeat_timeout`` without a frame, ``ConnectionClosed`` when the
        server goes away; protocol problems are the handler's and never raise.
        Resource handling: the caller owns and closes ``ws``.
        """
        loop = asyncio.get_running_loop()
        handler = self._handler
        handler.start_session()
        # Silence is measured from the last frame *or* the moment the consumer
        # handed control back, whichever is later: a slow consumer leaves
        # frames queued in the socket, which is not a dead connection.
        waiting_since = loop.time()
        probed = False
        while True:
            for request in handler.take_requests(loop.time()):
                await ws.send(request)
            silent_for = loop.time() - waiting_since
            if silent_for >= self._heartbeat_timeout:
                raise _SilenceTimeout
            if silent_for >= self._heartbeat_timeout / 2 and not probed:
                self._ping_ids += 1
                await ws.send(ping_request(self._ping_ids))
                probed = True
            deadline = waiting_since + self._heartbeat_timeout / (1 if probed else 2)
            wakeup = handler.next_wakeup()
            if wakeup is not None:
                deadline = min(deadline, wakeup)
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    frame = await ws.recv()
            except TimeoutError:
                continue
            probed = False
            received = loop.time()
            for record in handler.handle_frame(frame, ingest_ts=self._clock_ns(), now=received):
                yield record
            waiting_since = loop.time()

    def status(self) -> dict[str, Any]:
        """Connection state, reconnects by cause and per-symbol health (JSON-serialisable)."""
        return {
            "name": self.name,
            "venue": self.venue,
            "url": self.url,
            "connected": self._connected,
            "connections": self._connections,
            "reconnects": dict(self._reconnects),
            "last_error": self._last_error,
            **self._handler.status(),
        }


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
