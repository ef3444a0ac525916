"""A peer's partition endpoints on a real loopback HTTP server, without a whole daemon.

Unit tests of the warm/cold executor, fencing and reconciliation pull from
this server over real HTTP (the same handlers and error middleware the admin
server mounts), so only the daemon around it is left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from cryptorun_daemon.admin.errors import error_middleware
from cryptorun_daemon.replication.serving import PartitionServer, ServeGuard
from cryptorun_daemon.storage.catalog import Catalog


@contextlib.asynccontextmanager
async def serving_partitions(
    root: Path, region: str, *, epoch: int = 1, serve_guard: ServeGuard | None = None
) -> AsyncIterator[str]:
    """Serve ``root``'s sealed partitions as ``region`` at ``epoch`` (every tier) on
    127.0.0.1 with an ephemeral port; yields the base URL and stops the server after."""
    server = PartitionServer(
        root=root,
        region=region,
        catalog=Catalog(root),
        epoch_provider=lambda _tier: epoch,
        now=lambda: datetime.now(UTC),
        serve_guard=serve_guard,
    )
    async with serving_routes(server.routes()) as url:
        yield url


@contextlib.asynccontextmanager
async def serving_routes(routes: Iterable[web.AbstractRouteDef]) -> AsyncIterator[str]:
    """``routes`` behind the admin error middleware on 127.0.0.1 (ephemeral port); yields
    the base URL and stops the server after."""
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(routes)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    await test_server.start_server()
    try:
        yield str(test_server.make_url("")).rstrip("/")
    finally:
        await test_server.close()
