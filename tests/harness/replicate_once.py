"""Replicate every warm partition of one root into another, once, as its own process.

``python -m tests.harness.replicate_once SRC DST`` serves ``SRC`` with the real
``PartitionServer`` on a loopback port and pulls every partition it lists into
``DST`` with the real ``WarmColdExecutor`` over ``HttpPeer``: the replica commit
path of the daemon, in a process a fail point (``CRYPTORUN_FAILPOINTS``) can
end at any step. Exits 0 when every partition is committed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from cryptorun_daemon.admin.errors import error_middleware
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.executors_warm_cold import WarmColdExecutor
from cryptorun_daemon.replication.serving import PartitionServer
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.storage.manifest import HashCache
from tests.harness.daemons import free_port


async def replicate(src: Path, dst: Path) -> None:
    server = PartitionServer(
        root=src,
        region="eu-central",
        catalog=Catalog(src),
        epoch_provider=lambda _tier: 1,
        now=lambda: datetime.now(UTC),
    )
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(server.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            peer = HttpPeer(
                session, "eu-central", f"http://127.0.0.1:{port}", headers={}, request_timeout=10
            )
            executor = WarmColdExecutor(
                root=dst,
                region="us-east",
                source=peer,
                metrics=Metrics(CollectorRegistry()),
                retry_backoff=0.0,
                hash_cache=HashCache(),
            )
            for manifest in (await peer.list_partitions("warm")).manifests:
                await executor.replicate_partition(manifest)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(replicate(Path(sys.argv[1]), Path(sys.argv[2])))
