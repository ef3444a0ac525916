"""The fault proxy forwards, stalls and half-opens real loopback TCP connections.

The proxy runs as its own process (as in the chaos cluster) in front of an
echo server on 127.0.0.1; faults are switched over its unix control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

QUIET = 0.5  # how long "nothing arrives" is watched for; the check never asserts elapsed time


@dataclass
class Echo:
    port: int
    closed: asyncio.Event


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[Echo]:
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            closed.set()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield Echo(server.sockets[0].getsockname()[1], closed)


@contextlib.asynccontextmanager
async def fault_proxy(tmp_path: Path, target: int) -> AsyncIterator[tuple[int, Path]]:
    port, control = free_port(), tmp_path / "proxy.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.chaos.fault_proxy",
            f"--control={control}",
            f"--link=peer:{port}:127.0.0.1:{target}",
        ],
    )
    try:
        for _ in range(200):
            if control.exists():
                break
            await asyncio.sleep(0.05)
        yield port, control
    finally:
        proc.terminate()
        proc.wait(10)


async def command(control: Path, **change: object) -> None:
    reader, writer = await asyncio.open_unix_connection(str(control))
    writer.write(json.dumps({"link": "peer", **change}).encode() + b"\n")
    assert json.loads(await reader.readline()) == {"ok": True}
    writer.close()


async def nothing_arrives(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), QUIET)
    except TimeoutError:
        return True
    return False


@pytest.mark.slow
async def test_stall_holds_bytes_and_releases_them_in_order(tmp_path: Path) -> None:
    """Bytes pass through; while stalled nothing is delivered and the connection stays
    open; on release the held bytes arrive, in order."""
    async with echo_server() as echo, fault_proxy(tmp_path, echo.port) as (port, control):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"one")
        assert await reader.readexactly(3) == b"one"
        await command(control, stall=True)
        writer.write(b"two")
        assert await nothing_arrives(reader)
        await command(control, stall=False)
        assert await reader.readexactly(3) == b"two"
        writer.close()


@pytest.mark.slow
async def test_half_open_drops_the_upstream_and_leaves_the_client_hanging(
    tmp_path: Path,
) -> None:
    """Half-open: the server side of an open connection is closed, the client side stays
    open and silent (no data, no EOF); a new connection is accepted but never answered;
    after the fault new connections work again."""
    async with echo_server() as echo, fault_proxy(tmp_path, echo.port) as (port, control):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        await command(control, half_open=True)
        await asyncio.wait_for(echo.closed.wait(), 10)
        writer.write(b"lost")
        assert await nothing_arrives(reader)
        assert not reader.at_eof()
        new_reader, new_writer = await asyncio.open_connection("127.0.0.1", port)
        new_writer.write(b"hello")
        assert await nothing_arrives(new_reader)
        await command(control, half_open=False)
        fresh_reader, fresh_writer = await asyncio.open_connection("127.0.0.1", port)
        fresh_writer.write(b"back")
        assert await fresh_reader.readexactly(4) == b"back"
        for w in (writer, new_writer, fresh_writer):
            w.close()
