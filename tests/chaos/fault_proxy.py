"""Userspace TCP fault proxy for the inter-region links (the kernel here has no netem).

One process per region namespace, one listener per outgoing link: the region's
daemon reaches peer ``B`` at ``127.0.0.1:PORT`` and the proxy forwards to
``B``'s address on the veth link. Per link, set over a unix control socket
(one JSON object per line, answered with ``{"ok": true}``)::

    {"link": "r2", "latency": 0.2, "bandwidth": 20000, "stall": false, "half_open": false}

- ``latency`` (s): every chunk is delivered that long after it was read, order kept;
- ``bandwidth`` (bytes/s, 0 = unlimited): each direction is paced to it;
- ``stall``: nothing is forwarded (bytes are held, bounded, and delivered on un-stall);
  connections stay open — the peer looks alive but silent;
- ``half_open``: every open connection loses its upstream side without telling
  the client (no FIN, no RST: the client's socket stays open and silent
  forever), and new connections are accepted but never connected upstream.
  Turning it off lets new connections through; the dead ones stay dead, as
  after a NAT/firewall state loss: only the client's own time-outs recover it.

Usage: ``python -m tests.chaos.fault_proxy --control SOCK --link NAME:PORT:HOST:TPORT ...``

Error handling: an upstream that refuses or is unreachable closes the client
connection (the client sees a reset, as it would without the proxy); a bad
control line is answered ``{"ok": false, "error": ...}``. Resource handling:
each connection's two pumps run in one TaskGroup; closing either side ends both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CHUNK = 16384
QUEUE_CHUNKS = 64  # bytes held per direction while stalled/slowed: ≤ 1 MiB, then backpressure

ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class LinkState:
    """The faults currently applied to one link."""

    name: str
    listen_port: int
    target: tuple[str, int]
    latency: float = 0.0
    bandwidth: float = 0.0
    open_flow: asyncio.Event = field(default_factory=asyncio.Event)
    half_open: bool = False
    connections: set[Connection] = field(default_factory=set)

    def apply(self, change: dict[str, Any]) -> None:
        """Apply a control message (missing keys keep their value)."""
        if "latency" in change:
            self.latency = max(0.0, float(change["latency"]))
        if "bandwidth" in change:
            self.bandwidth = max(0.0, float(change["bandwidth"]))
        if "stall" in change:
            if change["stall"]:
                self.open_flow.clear()
            else:
                self.open_flow.set()
        if "half_open" in change:
            self.half_open = bool(change["half_open"])
            if self.half_open:
                for connection in list(self.connections):
                    connection.cut_upstream()


class Connection:
    """One proxied client connection: two pumps, each reader → queue → paced writer."""

    def __init__(self, link: LinkState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.link = link
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.dead = asyncio.Event()  # half-open: the client is left hanging

    def cut_upstream(self) -> None:
        """Drop the upstream side silently; the client side stays open and mute."""
        self.dead.set()
        if self.upstream is not None:
            self.upstream[1].transport.abort()

    async def run(self) -> None:
        """Proxy until either side closes (or, half-open, until the client gives up)."""
        reader, writer = self.client
        try:
            if self.link.half_open:
                self.dead.set()
            else:
                self.upstream = await asyncio.wait_for(
                    asyncio.open_connection(*self.link.target), timeout=10
                )
            if self.dead.is_set() or self.upstream is None:
                await self._hang(reader)
                return
            up_reader, up_writer = self.upstream
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer))
                group.create_task(self._pump(up_reader, writer))
        except (OSError, TimeoutError, ExceptionGroup):
            if self.dead.is_set():
                with contextlib.suppress(OSError):
                    await self._hang(reader)
        finally:
            writer.transport.abort()
            if self.upstream is not None:
                self.upstream[1].transport.abort()

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        # Read and discard until the client closes: it never hears anything back.
        while await reader.read(CHUNK):
            pass

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read_side() -> None:
            while data := await reader.read(CHUNK):
                await queue.put((time.monotonic() + self.link.latency, data))
            await queue.put((0.0, b""))

        async def write_side() -> None:
            while True:
                due, data = await queue.get()
                await self.link.open_flow.wait()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.dead.is_set():
                    # Half-open: bytes vanish and the far side is never told anything
                    # (no EOF): this pump ends quietly when its reader does.
                    if not data:
                        return
                    continue
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                if self.link.bandwidth > 0:
                    await asyncio.sleep(len(data) / self.link.bandwidth)
            if writer.can_write_eof():
                writer.write_eof()

        async with asyncio.TaskGroup() as group:
            group.create_task(read_side())
            group.create_task(write_side())


async def serve(links: list[LinkState], control_path: str) -> None:
    """Run every link's listener and the control socket until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    by_name = {link.name: link for link in links}

    def acceptor(link: LinkState) -> ClientHandler:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connection = Connection(link, reader, writer)
            link.connections.add(connection)
            try:
                await connection.run()
            finally:
                link.connections.discard(connection)

        return accept

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            try:
                change = json.loads(line)
                by_name[str(change["link"])].apply(change)
                answer: dict[str, object] = {"ok": True}
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": repr(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        writer.close()

    servers = []
    for link in links:
        link.open_flow.set()
        servers.append(await asyncio.start_server(acceptor(link), "127.0.0.1", link.listen_port))
    servers.append(await asyncio.start_unix_server(control, control_path))
    print("fault proxy ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    for link in links:
        for connection in list(link.connections):
            connection.cut_upstream()
    with contextlib.suppress(OSError):
        os.unlink(control_path)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``--link NAME:PORT:HOST:TPORT`` specs and serve them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--control", required=True, help="unix socket path for fault commands")
    parser.add_argument("--link", action="append", default=[], help="NAME:LISTEN_PORT:HOST:PORT")
    args = parser.parse_args(argv)
    links = []
    for spec in args.link:
        name, port, host, target_port = spec.split(":")
        links.append(LinkState(name, int(port), (host, int(target_port))))
    asyncio.run(serve(links, args.control))


if __name__ == "__main__":
    main()
