"""Loopback networking for tests: free ports and a TCP relay that injects faults.

Faults are injected on real sockets between two real endpoints (cut, refuse,
pause, stall mid-stream), never by mocking our own network code.
"""

from __future__ import annotations

import asyncio
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).

    Another process may take it before the caller binds it; callers that can
    bind port 0 themselves (and read the port back) should do that instead.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaultProxy:
    """A loopback TCP relay from ``self.port`` to ``target_port`` that a test can break.

    Faults: :meth:`cut` aborts every relayed connection (a network reset);
    :meth:`down` also refuses new ones until ``up`` is set again; :meth:`pause`
    stops relaying target → client while the connections stay open (a stalled
    consumer), :meth:`resume` lets it flow again; ``stall_after=N`` stops each
    connection's target → client stream after N bytes and holds it open (a peer
    hanging mid-file).

    ``buffer`` (bytes) shrinks the relay's receive buffer towards the target and
    its read size, so a pause backs the target's socket up quickly; leave it
    ``None`` for full loopback speed.

    Resource handling: use as ``async with FaultProxy(port) as proxy`` (or
    :meth:`start` / :meth:`close`); closing stops the listener, aborts every
    connection and cancels and awaits every relay task, so nothing outlives it.
    """

    def __init__(
        self, target_port: int, *, stall_after: int | None = None, buffer: int | None = None
    ) -> None:
        self.target_port = target_port
        self.stall_after = stall_after
        self.buffer = buffer
        self.port = 0  # set by start(): the listener binds port 0
        self.up = True  # False: new connections are closed at once
        # Writers of every open relayed connection (both sides), for cut().
        self._writers: set[asyncio.StreamWriter] = set()
        # One task per accepted connection (asyncio.start_server creates it); close()
        # cancels them, so a stalled relay does not outlive the test.
        self._handlers: set[asyncio.Task[object]] = set()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def cut(self) -> None:
        """Abort every relayed connection (both directions), like a network reset."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def down(self) -> None:
        """Cut every connection and refuse new ones until ``up`` is set to True."""
        self.up = False
        self.cut()

    def pause(self) -> None:
        """Stop relaying target → client: the client becomes a stalled consumer."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.buffer is not None:
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer)
            upstream.setblocking(False)
            try:
                loop = asyncio.get_running_loop()
                await loop.sock_connect(upstream, ("127.0.0.1", self.target_port))
                up_reader, up_writer = await asyncio.open_connection(
                    sock=upstream, limit=self.buffer or 2**16
                )
            except OSError:
                upstream.close()
                writer.close()
                return
            self._writers.update((writer, up_writer))
            await asyncio.gather(
                self._pipe(reader, up_writer, chunk=65536),
                self._pipe(up_reader, writer, chunk=self.buffer or 65536, downstream=True),
            )
        finally:
            self._handlers.discard(task)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        chunk: int,
        downstream: bool = False,
    ) -> None:
        """Copy ``reader`` to ``writer`` until EOF or a reset; faults apply ``downstream``
        (target → client) only. Closes ``writer`` at the end."""
        limit = self.stall_after if downstream else None
        sent = 0
        try:
            while True:
                if downstream:
                    await self._flowing.wait()
                data = await reader.read(chunk)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    writer.write(data[: limit - sent])
                    await writer.drain()
                    # Hang here with the connection open until close() cancels us.
                    await asyncio.get_running_loop().create_future()
                writer.write(data)
                await writer.drain()
                sent += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
