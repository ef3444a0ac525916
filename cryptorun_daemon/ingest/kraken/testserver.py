"""A local server speaking the Kraken WebSocket v2 subset our connector uses.

(About 500 lines: one protocol server with its fault switches; the market it
publishes is in :mod:`.simulator`.)

For tests and the demo: a real WebSocket server on loopback that publishes a
seeded, self-consistent market (see :mod:`.simulator`) with Kraken's message
shapes and correct book checksums, and that can inject faults on demand.

Protocol subset: ``status`` on connect; ``subscribe`` / ``unsubscribe`` for
``instrument``, ``book`` (depth 10, 25, 100, 500, 1000) and ``trade`` with one
ack per symbol, error replies for unknown pairs; snapshots (book top ``depth``,
last 50 trades); updates; ``heartbeat`` after a second without other traffic;
``ping`` → ``pong``. Book updates follow Kraken's rules: only levels inside the
subscriber's depth are sent, a level pushed out of scope gets no delete (the
client truncates), a level revealed by a delete is sent, one message may carry
several updates of the same price.

Usage::

    async with KrakenTestServer(rate=20) as server:   # 127.0.0.1, ephemeral port
        feed = KrakenFeed(config, metrics, url=server.url)

or ``python -m cryptorun_daemon.ingest.kraken.testserver --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from cryptorun_daemon.ingest.kraken.messages import BOOK_DEPTHS, ns_to_rfc3339
from cryptorun_daemon.ingest.kraken.simulator import (
    DEFAULT_INSTRUMENTS,
    TRADE_SNAPSHOT_SIZE,
    BookSide,
    Change,
    InstrumentSpec,
    SimulatedMarket,
)

log = structlog.get_logger("cryptorun.ingest.kraken.testserver")

Channel = Literal["book", "trade"]


@dataclass
class _BookView:
    """What one subscriber's book holds (its depth-truncated copy of the market)."""

    depth: int
    sides: dict[BookSide, dict[Decimal, Decimal]] = field(
        default_factory=lambda: {"bids": {}, "asks": {}}
    )


@dataclass(frozen=True, slots=True)
class _Request:
    """The parts of a subscribe / unsubscribe request that apply to each symbol."""

    method: str
    channel: str
    params: dict[str, Any]
    req_id: Any
    time_in: str


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    number: int
    books: dict[str, _BookView] = field(default_factory=dict)
    trades: set[str] = field(default_factory=set)
    instrument: bool = False
    silent: bool = False
    last_sent: float = 0.0

    @property
    def subscribed(self) -> bool:
        return bool(self.books or self.trades or self.instrument)


class KrakenTestServer:
    """Kraken-v2-protocol server with a generated market and fault injection.

    ``rate`` is book updates per second per symbol (each tick may also print
    0–3 trades); ``rate=0`` publishes only when a test calls :meth:`tick`.
    Fault controls act on the next message(s) and are one-shot unless said
    otherwise. Resource handling: :meth:`stop` (or leaving ``async with``)
    stops the market task and closes every connection.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        symbols: Sequence[str] = tuple(DEFAULT_INSTRUMENTS),
        instruments: Sequence[InstrumentSpec] = (),
        rate: float = 10.0,
        seed: int = 1,
        heartbeat_interval: float = 1.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        specs = {spec.symbol: spec for spec in instruments} or {
            symbol: DEFAULT_INSTRUMENTS[symbol] for symbol in symbols
        }
        self.host = host
        self.port = port
        self.rate = rate
        self.heartbeat_interval = heartbeat_interval
        self.markets = {s: SimulatedMarket(spec, seed=seed) for s, spec in specs.items()}
        self._clock_ns = clock_ns
        # Start with a full tape so the first trade snapshot looks like Kraken's (50 trades).
        opening = ns_to_rfc3339(clock_ns())
        for market in self.markets.values():
            while len(market.recent_trades) < TRADE_SNAPSHOT_SIZE:
                market.trades(opening)
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._market_task: asyncio.Task[None] | None = None
        self._drop: dict[Channel, set[str]] = {"book": set(), "trade": set()}
        self._corrupt: set[str] = set()
        self._fail_subscribe: dict[tuple[str, str], str] = {}
        self.connections_total = 0
        self.requests: list[dict[str, Any]] = []
        """Every request received, with ``"_connection"`` = the connection's number."""

    # --- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v2"

    async def start(self) -> None:
        """Listen (resolving ``port=0`` to the real port) and start publishing."""
        self._server = await serve(self._serve_client, self.host, self.port, max_size=1 << 20)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        if self.rate > 0:
            self._market_task = asyncio.create_task(self._run_market(), name="kraken-test-market")
        log.info("kraken test server listening", url=self.url, rate=self.rate)

    async def stop(self) -> None:
        """Stop publishing, close every connection and the listening socket."""
        if self._market_task is not None:
            self._market_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._market_task
            self._market_task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> KrakenTestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def open_connections(self) -> int:
        return len(self._clients)

    # --- fault injection -------------------------------------------------------------

    def drop_next(self, channel: Channel, symbol: str) -> None:
        """Do not send the next ``channel`` update of ``symbol`` (the market still moves)."""
        self._drop[channel].add(symbol)

    def skip_trade_ids(self, symbol: str, count: int = 1) -> None:
        """Make the next trade of ``symbol`` jump ``count`` ids (a trade_id gap)."""
        self.markets[symbol].skip_trade_ids(count)

    def corrupt_next_checksum(self, symbol: str) -> None:
        """Send the next book update of ``symbol`` with a wrong checksum."""
        self._corrupt.add(symbol)

    def fail_next_subscribe(
        self, channel: str, symbol: str, error: str = "Subscription depth not supported"
    ) -> None:
        """Answer the next subscribe of ``symbol`` on ``channel`` with ``success: false``."""
        self._fail_subscribe[(channel, symbol)] = error

    def go_silent(self) -> int:
        """Stop sending anything (data, heartbeats, acks, pongs) on every open connection.

        New connections are served normally. Returns how many were silenced.
        """
        for client in self._clients:
            client.silent = True
        return len(self._clients)

    async def send_raw(self, text: str) -> int:
        """Send ``text`` verbatim (e.g. a non-JSON frame) to every connection."""
        for client in list(self._clients):
            await self._send_text(client, text)
        return len(self._clients)

    async def close_connections(self, code: int = 1001, reason: str = "going away") -> int:
        """Close every open connection with a close frame; returns how many."""
        clients = list(self._clients)
        for client in clients:
            await client.ws.close(code, reason)
        return len(clients)

    # --- market publishing ----------------------------------------------------------

    async def _run_market(self) -> None:
        """Publish one tick every ``1 / rate`` seconds until cancelled."""
        interval = 1.0 / self.rate
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            next_tick += interval
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            await self.tick()

    async def tick(self) -> None:
        """Advance every market one step and publish the changes and trades."""
        timestamp = ns_to_rfc3339(self._clock_ns())
        for symbol, market in self.markets.items():
            changes = market.step()
            trades = market.trades(timestamp)
            drop_book = symbol in self._drop["book"]
            drop_trade = symbol in self._drop["trade"] and bool(trades)
            corrupt = symbol in self._corrupt
            book_sent = False
            for client in list(self._clients):
                view = client.books.get(symbol)
                if view is not None:
                    update = _book_diff(market, view, changes)
                    if update is not None:
                        book_sent = True
                        checksum = market.checksum() ^ (0x5A5A5A5A if corrupt else 0)
                        if not drop_book:
                            await self._send(
                                client, _book_message("update", symbol, update, checksum, timestamp)
                            )
                if trades and symbol in client.trades and not drop_trade:
                    await self._send(client, {"channel": "trade", "type": "update", "data": trades})
            if book_sent:
                self._drop["book"].discard(symbol)
                self._corrupt.discard(symbol)
            if drop_trade:
                self._drop["trade"].discard(symbol)

    # --- connections ------------------------------------------------------------------

    async def _serve_client(self, ws: ServerConnection) -> None:
        self.connections_total += 1
        client = _Client(ws=ws, number=self.connections_total)
        self._clients.add(client)
        heartbeats = asyncio.create_task(self._heartbeats(client), name="kraken-test-heartbeat")
        try:
            await self._send(client, {
                "channel": "status", "type": "update",
                "data": [{"api_version": "v2", "connection_id": client.number,
                          "system": "online", "version": "2.0.0-test"}],
            })  # fmt: skip
            async for frame in ws:
                await self._on_request(client, frame)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats

    async def _heartbeats(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_interval / 4)
            idle = loop.time() - client.last_sent
            if client.subscribed and idle >= self.heartbeat_interval:
                await self._send(client, {"channel": "heartbeat"})

    async def _on_request(self, client: _Client, frame: str | bytes) -> None:
        time_in = ns_to_rfc3339(self._clock_ns())
        try:
            request = json.loads(frame)
            method = request["method"]
        except (ValueError, TypeError, KeyError):
            await self._send(
                client,
                {
                    "error": "Malformed request",
                    "success": False,
                    "time_in": time_in,
                    "time_out": time_in,
                },
            )
            return
        # Recorded even when silent, so tests can see what a client tried.
        self.requests.append({**request, "_connection": client.number})
        if client.silent:
            return
        req_id = request.get("req_id")
        if method == "ping":
            await self._send(client, _reply("pong", req_id, time_in, self._clock_ns()))
            return
        params = request.get("params") or {}
        channel = params.get("channel")
        if method not in ("subscribe", "unsubscribe") or channel not in (
            "instrument",
            "book",
            "trade",
        ):
            await self._send(
                client,
                {
                    **_reply(method, req_id, time_in, self._clock_ns()),
                    "success": False,
                    "error": "Method or channel not supported",
                },
            )
            return
        if channel == "instrument":
            await self._on_instrument(client, method, req_id, time_in)
            return
        per_symbol = _Request(
            method=method, channel=channel, params=params, req_id=req_id, time_in=time_in
        )
        for symbol in params.get("symbol") or []:
            await self._on_symbol(client, per_symbol, symbol)

    async def _on_instrument(self, client: _Client, method: str, req_id: Any, time_in: str) -> None:
        reply = _reply(method, req_id, time_in, self._clock_ns())
        reply["result"] = {"channel": "instrument", "snapshot": True}
        await self._send(client, reply)
        client.instrument = method == "subscribe"
        if client.instrument:
            pairs = [market.spec.as_pair() for market in self.markets.values()]
            assets = sorted({a for m in self.markets.values() for a in (m.spec.base, m.spec.quote)})
            await self._send(client, {
                "channel": "instrument", "type": "snapshot",
                "data": {"assets": [{"id": a, "status": "enabled", "precision": 10,
                                     "precision_display": 5} for a in assets],
                         "pairs": pairs},
            })  # fmt: skip

    async def _on_symbol(self, client: _Client, request: _Request, symbol: Any) -> None:
        method, channel, depth = request.method, request.channel, request.params.get("depth", 10)
        reply = _reply(method, request.req_id, request.time_in, self._clock_ns())
        market = self.markets.get(symbol) if isinstance(symbol, str) else None
        error = self._fail_subscribe.pop((channel, symbol), None) if method == "subscribe" else None
        if market is None:
            error = f"Currency pair not supported {symbol}"
        elif channel == "book" and depth not in BOOK_DEPTHS:
            error = f"Subscription depth not supported: {depth}"
        if market is None or error is not None:
            await self._send(client, {**reply, "success": False, "error": error, "symbol": symbol})
            return
        result: dict[str, Any] = {"channel": channel, "symbol": symbol}
        if channel == "book":
            result["depth"] = depth
        if method == "unsubscribe":
            client.books.pop(symbol, None)
            client.trades.discard(symbol)
            await self._send(client, {**reply, "result": result})
            return
        snapshot = request.params.get("snapshot", True) is not False
        result["snapshot"] = snapshot
        await self._send(client, {**reply, "result": result})
        timestamp = ns_to_rfc3339(self._clock_ns())
        if channel == "book":
            view = _BookView(depth=depth)
            view.sides["bids"] = dict(market.top("bids", depth))
            view.sides["asks"] = dict(market.top("asks", depth))
            client.books[symbol] = view
            if snapshot:
                levels = {side: list(view.sides[side].items()) for side in view.sides}
                await self._send(
                    client, _book_message("snapshot", symbol, levels, market.checksum(), timestamp)
                )
        else:
            client.trades.add(symbol)
            if snapshot:
                await self._send(
                    client,
                    {"channel": "trade", "type": "snapshot", "data": list(market.recent_trades)},
                )

    async def _send(self, client: _Client, message: dict[str, Any]) -> None:
        await self._send_text(client, json.dumps(message, default=_json_default))

    async def _send_text(self, client: _Client, text: str) -> None:
        if client.silent:
            return
        try:
            await client.ws.send(text)
        except ConnectionClosed:
            self._clients.discard(client)
            return
        client.last_sent = asyncio.get_running_loop().time()


def _book_diff(
    market: SimulatedMarket, view: _BookView, changes: Sequence[Change]
) -> dict[BookSide, list[tuple[Decimal, Decimal]]] | None:
    """The update one subscriber needs to follow ``changes``; updates ``view``.

    Sent: every change (in order, repeats included) to a level that ends up
    inside the subscriber's depth or that deletes a level it holds; plus levels
    newly revealed inside its depth. Not sent: deletes for levels merely
    pushed out of scope (Kraken leaves those to client-side truncation).
    """
    update: dict[BookSide, list[tuple[Decimal, Decimal]]] = {"bids": [], "asks": []}
    for side in ("bids", "asks"):
        held = view.sides[side]
        market_side = market.bids if side == "bids" else market.asks
        visible = dict(market.top(side, view.depth))
        touched = set()
        for change_side, price, qty in changes:
            if change_side != side:
                continue
            if price in visible or (price in held and price not in market_side):
                update[side].append((price, qty))
                touched.add(price)
        for price, qty in visible.items():
            if price not in touched and held.get(price) != qty:
                update[side].append((price, qty))
        view.sides[side] = visible
    return update if update["bids"] or update["asks"] else None


def _book_message(
    kind: str,
    symbol: str,
    levels: dict[BookSide, list[tuple[Decimal, Decimal]]],
    checksum: int,
    timestamp: str,
) -> dict[str, Any]:
    book = {
        "symbol": symbol,
        "bids": [{"price": p, "qty": q} for p, q in levels["bids"]],
        "asks": [{"price": p, "qty": q} for p, q in levels["asks"]],
        "checksum": checksum,
        "timestamp": timestamp,
    }
    return {"channel": "book", "type": kind, "data": [book]}


def _reply(method: str, req_id: Any, time_in: str, now_ns: int) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "method": method,
        "success": True,
        "time_in": time_in,
        "time_out": ns_to_rfc3339(now_ns),
    }
    if req_id is not None:
        reply["req_id"] = req_id
    return reply


def _json_default(value: object) -> object:
    # Kraken sends prices as JSON numbers with trailing zeros dropped; float's
    # shortest repr does the same and round-trips these ≤15-digit values.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- command line ---------------------------------------------------------------------


async def _serve_forever(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = KrakenTestServer(
        host=args.host, port=args.port, symbols=args.symbols, rate=args.rate, seed=args.seed
    )
    async with server:
        print(f"kraken test server: {server.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cryptorun_daemon.ingest.kraken.testserver --port N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="book updates per second per symbol"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--symbols", nargs="+", default=list(DEFAULT_INSTRUMENTS), choices=list(DEFAULT_INSTRUMENTS)
    )
    asyncio.run(_serve_forever(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
