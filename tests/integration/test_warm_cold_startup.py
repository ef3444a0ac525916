"""A replica's start-up with a long divergence walk: ready at once, pulling after the walk.

Real daemon processes on loopback HTTP. The replica's root holds a sealed
partition and a fence it has not judged yet, so its start runs the divergence
walk over its history; the ``replica.divergence_walk`` fail point holds that
walk (``sleep``) the way a year of history would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.storage.layout import PartitionKey, hourly_key
from cryptorun_daemon.storage.manifest import HashCache
from cryptorun_daemon.storage.seal import seal_partition
from cryptorun_daemon.storage.write_fence import advance_fence
from tests.harness.daemons import (
    RegionSpec,
    auth_headers,
    free_port,
    start_daemon_process,
    stop_process,
    wait_until_ready,
)
from tests.harness.testdata import write_trade_partition
from tests.harness.wait import eventually

pytestmark = pytest.mark.slow

T0 = datetime(2025, 9, 1, tzinfo=UTC)
A, B = "eu-central", "us-east"
#: How long the fail point holds the walk at its one manifest (milliseconds).
WALK_HELD_MS = 15_000


def _key(hour: int) -> PartitionKey:
    return hourly_key("warm", "trade", "kraken", "BTC-USD", T0 + timedelta(hours=hour))


def _regions(tmp: Path) -> tuple[RegionSpec, RegionSpec]:
    ports = {A: free_port(), B: free_port()}
    rules = [{"tier": "warm", "from": A, "to": [B], "lag_slo": "2s"}]
    a, b = (
        RegionSpec(
            name,
            ports[name],
            tmp / name,
            peers={n: p for n, p in ports.items() if n != name},
            rules=rules,
        )
        for name in (A, B)
    )
    return a, b


async def _warm_status(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/status", params={"tier": "warm"}) as resp,
    ):
        doc = await resp.json()
    return dict(doc["tiers"]["warm"])


async def _seal_at(url: str, key: PartitionKey) -> None:
    async def sealed() -> bool:
        async with (
            aiohttp.ClientSession(headers=auth_headers()) as http,
            http.post(
                f"{url}/v1/partitions/seal", json={"tier": "warm", "partition": key.relpath}
            ) as resp,
        ):
            if resp.status == 503:  # roles not compared with the peers yet
                return False
            assert resp.status == 200, await resp.text()
            return True

    await eventually(sealed, f"the seal of {key.relpath}", timeout=90)


async def test_replica_is_ready_while_its_divergence_walk_runs(tmp_path: Path) -> None:
    """A replica whose start-up divergence walk is held answers ready anyway: its status
    shows the walk running (with the manifests walked so far) and its pull link waiting
    for it; once the walk ends the link pulls what the primary sealed, and the
    replica's own legitimate partition stays where it was."""
    a_spec, b_spec = _regions(tmp_path)
    # The replica already holds hour 0 (sealed by A at epoch 1) and a fence it has
    # never judged its history against: its start must walk every manifest.
    held = write_trade_partition(b_spec.storage_root, _key(0), rows=50, origin=A, seed=1)
    seal_partition(
        held, writer_region=A, epoch=1, sealed_at=T0 + timedelta(hours=1), cache=HashCache()
    )
    advance_fence(
        b_spec.storage_root, "warm", epoch=1, primary=A, updated_at=T0, transitions=[(1, T0, A)]
    )
    a_proc = start_daemon_process(a_spec.write())
    b_proc = None
    try:
        await wait_until_ready(a_spec.base_url, proc=a_proc)
        write_trade_partition(a_spec.storage_root, _key(1), rows=50, origin=A, seed=2)
        await _seal_at(a_spec.base_url, _key(1))

        b_proc = start_daemon_process(
            b_spec.write(),
            env={"CRYPTORUN_FAILPOINTS": f"replica.divergence_walk=sleep({WALK_HELD_MS})"},
        )
        await wait_until_ready(b_spec.base_url, proc=b_proc)
        warm = await _warm_status(b_spec.base_url)
        check = warm["reconciliation"]["divergence_check"]
        assert check["state"] == "running", check
        assert check["walking"] is True
        assert check["walked"] == 1
        link = warm["sources"][A]
        assert link["waiting_for"] == "divergence_check"
        assert not _key(1).directory(b_spec.storage_root).exists()

        async def pulled() -> bool:
            return (_key(1).directory(b_spec.storage_root) / "_SUCCESS").is_file()

        await eventually(pulled, "the replica to pull hour 1 after its walk", timeout=90)
        warm = await _warm_status(b_spec.base_url)
        check = warm["reconciliation"]["divergence_check"]
        assert (check["state"], check["walked"], check["moved"]) == ("done", 1, 0)
        assert warm["sources"][A]["waiting_for"] is None
        assert (_key(0).directory(b_spec.storage_root) / "_SUCCESS").is_file()
    finally:
        if b_proc is not None:
            stop_process(b_proc)
        stop_process(a_proc)
