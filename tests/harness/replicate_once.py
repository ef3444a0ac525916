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
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.storage.manifest import HashCache
from tests.harness.partitions import serving_partitions


async def replicate(src: Path, dst: Path) -> None:
    async with (
        serving_partitions(src, "eu-central") as base_url,
        aiohttp.ClientSession() as session,
    ):
        peer = HttpPeer(session, "eu-central", base_url, headers={}, request_timeout=10)
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


if __name__ == "__main__":
    asyncio.run(replicate(Path(sys.argv[1]), Path(sys.argv[2])))
