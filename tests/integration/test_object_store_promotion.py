"""A promoted region that holds a tier only in its bucket is a source like any other.

Region A (eu-central) seals cold partitions and keeps them on disk and in its bucket on
one S3 endpoint; region B (us-east) mirrors them bucket → bucket into its own bucket on
another endpoint, with no local copy. After the failover that makes B primary, a third
region C (ap-south, cold on local disk) replicates from B: B's change feed, digests,
manifests and files come from its bucket. B's window listing (what ``simulate`` and
inventories read) names its bucket's partitions, and once B is demoted again it serves
its legitimate old-epoch partitions for reconciliation from its bucket, and only those.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.config import ObjectStoreTier
from cryptorun_daemon.storage.change_feed import bucket_index
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, PartitionKey, object_key
from cryptorun_daemon.storage.object_store import TierBucket
from cryptorun_daemon.storage.seal import seal_partition
from tests.harness.admin import auth_headers, metric, post_failover, seal_when_accepted
from tests.harness.cli import operator_cli
from tests.harness.daemons import DaemonProcess, RegionSpec, run_daemon_process
from tests.harness.net import free_port
from tests.harness.s3 import (
    S3Server,
    aws_credentials,
    aws_env,
    running_s3_server,
    s3_server,
    tier_section,
)
from tests.harness.testdata import write_trade_partition
from tests.harness.wait import eventually

__all__ = ["aws_credentials", "s3_server"]  # pytest fixtures used by name

pytestmark = pytest.mark.slow

EU, US, AP = "eu-central", "us-east", "ap-south"
DATA = "part-0000.parquet"


def _key(day: int) -> PartitionKey:
    return PartitionKey(
        day=datetime(2025, 9, day, tzinfo=UTC).date(),
        hour=None,
        tier="cold",
        dataset="trade",
        venue="kraken",
        symbol="BTC-USD",
    )


def _tier_section(config: ObjectStoreTier) -> dict[str, object]:
    # 5 MiB parts: a file over 5 MiB goes through the streamed multipart path.
    return tier_section(config, multipart_threshold=5 << 20, part_size=5 << 20)


def _three_regions(tmp: Path) -> tuple[RegionSpec, RegionSpec, RegionSpec]:
    ports = {name: free_port() for name in (EU, US, AP)}
    rules = [{"tier": "cold", "from": EU, "to": [US, AP], "lag_slo": "5m"}]
    specs = [
        RegionSpec(
            name,
            port,
            tmp / name,
            peers={peer: p for peer, p in ports.items() if peer != name},
            rules=rules,
            # C starts only after the failover: A and B may act once it has been down 2 s.
            sections={"replication": {"feed_poll_interval": "200ms", "peer_down_after": "2s"}},
        )
        for name, port in ports.items()
    ]
    return specs[0], specs[1], specs[2]


async def test_promoted_bucket_only_region_serves_its_bucket_to_a_disk_replica(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Two cold partitions sealed at A reach B's bucket (another endpoint) with no copy on
    B's disk. A is stopped and B promoted (epoch 2). Region C, started afterwards with cold
    on local disk and no bucket configured, replicates both partitions from B, the new
    primary: it learns them from B's change feed (B's bucket index) and downloads their
    files over B's admin API, which streams them from B's bucket. C's copies are sealed and
    byte-identical to what A sealed, and B's disk still holds none of them. A partition B
    then seals itself (disk and bucket) reaches C through the same feed."""
    a, b, c = _three_regions(tmp_path)
    keys = [_key(1), _key(2)]
    later = _key(3)
    with running_s3_server(tmp_path) as other:
        async with (
            aiohttp.ClientSession() as http,
            _b_holding_a_partitions_in_its_bucket(
                s3_server, other, http, a, b, keys, rows=20_000
            ) as db,
        ):
            # A is down: B becomes the cold primary (A learns it when it comes back).
            code, doc = await post_failover(
                http,
                db.base_url,
                {"tier": "cold", "promote": US, "demote": EU, "dry_run": False},
            )
            assert code == 200, doc
            async with run_daemon_process(c.write(), env=aws_env()):

                def in_c() -> bool:
                    return all(
                        (key.directory(c.storage_root) / SUCCESS_MARKER).is_file() for key in keys
                    )

                await eventually(in_c, "both partitions replicated to C from B", timeout=90)
                # A partition B seals as primary goes to its disk and its bucket; the
                # disk → bucket worker indexes it with the rest, so C gets it too.
                write_trade_partition(b.storage_root, later, rows=5_000, seed=9)
                await seal_when_accepted(http, b.base_url, "cold", later.relpath)
                await eventually(
                    (later.directory(c.storage_root) / SUCCESS_MARKER).is_file,
                    "B's own new partition replicated to C",
                    timeout=90,
                )
        for key in keys:
            for name in (DATA, MANIFEST_NAME):
                assert (key.directory(c.storage_root) / name).read_bytes() == (
                    key.directory(a.storage_root) / name
                ).read_bytes()
            assert not key.directory(b.storage_root).exists()
        log = db.log_text()
    assert "partition streamed bucket to bucket" in log


@asynccontextmanager
async def _b_holding_a_partitions_in_its_bucket(
    s3_server: S3Server,
    other: S3Server,
    http: aiohttp.ClientSession,
    a: RegionSpec,
    b: RegionSpec,
    keys: list[PartitionKey],
    *,
    rows: int = 5_000,
) -> AsyncIterator[DaemonProcess]:
    """B running with ``keys``, sealed at A at epoch 1, mirrored into its bucket; A stopped.

    A's cold tier is on disk and in its bucket on ``s3_server``; B's is in its bucket on
    ``other``, filled bucket → bucket from A's, with nothing on B's disk.
    """
    a_config = s3_server.tier_config(EU, prefix="pr")
    b_config = other.tier_config(US, prefix="pr")
    a.sections["storage.tiers.cold"] = _tier_section(a_config)
    b.sections["storage.tiers.cold"] = _tier_section(b_config)
    b.sections["storage.sources.eu-central.cold"] = _tier_section(a_config)
    b_bucket = TierBucket("cold", b_config)
    async with run_daemon_process(b.write(), env=aws_env()) as db:
        async with run_daemon_process(a.write(), env=aws_env()):
            for index, key in enumerate(keys):
                write_trade_partition(a.storage_root, key, rows=rows, seed=index + 1)
                await seal_when_accepted(http, a.base_url, "cold", key.relpath)

            async def in_b_bucket() -> bool:
                heads = [await b_bucket.head(object_key(key, SUCCESS_MARKER)) for key in keys]
                return all(head is not None for head in heads)

            await eventually(in_b_bucket, "the partitions in B's bucket", timeout=90)
        assert not any(key.directory(b.storage_root).exists() for key in keys)
        yield db


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url, headers=auth_headers()) as resp:
        body = await resp.read()
        is_json = resp.content_type == "application/json"
        return resp.status, json.loads(body) if is_json else body


async def _cold_view_is(
    http: aiohttp.ClientSession, base_url: str, primary: str, epoch: int
) -> None:
    """Wait until ``base_url`` reports ``primary`` as the cold primary at ``epoch``."""

    async def seen() -> bool:
        async with http.get(f"{base_url}/v1/status", params={"tier": "cold"}) as resp:
            status = (await resp.json())["tiers"]["cold"]
        return (status["primary"], status["epoch"]) == (primary, epoch)

    await eventually(seen, f"{base_url}: cold primary {primary} at epoch {epoch}")


async def _reconcile_pass(http: aiohttp.ClientSession, base_url: str, source: str) -> int:
    """Ask ``base_url`` for one cold reconcile pass with ``source``; the HTTP status."""
    async with http.post(
        f"{base_url}/v1/replication/sync",
        json={"tier": "cold", "from": source, "kind": "reconcile"},
        headers=auth_headers(),
    ) as resp:
        await resp.read()
        return resp.status


async def _reconciled_into(
    http: aiohttp.ClientSession, base_url: str, source: str, folder: Path
) -> float:
    """Ask for reconcile passes with ``source`` until ``folder`` is sealed (a background
    pass may pull it first); the region's count of reconciled pulls then."""

    async def sealed() -> bool:
        await _reconcile_pass(http, base_url, source)
        return (folder / SUCCESS_MARKER).is_file()

    await eventually(sealed, f"{folder} reconciled from {source}")
    return await _reconciled_pulls(http, base_url)


async def _reconciled_pulls(http: aiohttp.ClientSession, base_url: str) -> float:
    return await metric(
        http,
        base_url,
        "cryptorun_reconciled_partitions_total",
        {"tier": "cold", "action": "pulled"},
    )


def _listed(doc: dict[str, Any]) -> dict[str, str]:
    """``{partition: content_hash}`` of a ``GET /v1/partitions`` answer."""
    return {p["partition"]: p["content_hash"] for p in doc["partitions"]}


def _sealed_at(root: Path, keys: list[PartitionKey]) -> dict[str, str]:
    """``{partition: content_hash}`` of the manifests ``root`` holds for ``keys``."""
    return {
        key.relpath: json.loads((key.directory(root) / MANIFEST_NAME).read_bytes())["content_hash"]
        for key in keys
    }


async def test_promoted_bucket_only_region_lists_its_bucket_partitions_for_simulate(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """B holds two cold partitions A sealed only in its bucket, and is promoted (A down).
    B's window listing as a source names both, with A's manifests; a window holding only
    the first day lists only it (a partition must lie wholly inside the window); its
    inventory listing names both too, without reading their manifests from the bucket
    again. ``cryptorun replication simulate --from us-east --to ap-south``, asked of a
    third region C, plans both partitions from B's listing; asked of B itself, from B's
    catalog and bucket index."""
    a, b, c = _three_regions(tmp_path)
    keys = [_key(1), _key(2)]
    base = f"{b.base_url}/v1/partitions?tier=cold"
    with running_s3_server(tmp_path) as other:
        async with aiohttp.ClientSession() as http:
            async with _b_holding_a_partitions_in_its_bucket(
                s3_server, other, http, a, b, keys
            ) as db:
                code, doc = await post_failover(
                    http,
                    db.base_url,
                    {"tier": "cold", "promote": US, "demote": EU, "dry_run": False},
                )
                assert code == 200, doc
                expected = _sealed_at(a.storage_root, keys)
                read = {"tier": "cold", "op": "get"}
                before = await metric(http, db.base_url, "cryptorun_object_store_bytes_total", read)
                code, doc = await _get(
                    http,
                    f"{base}&start=2025-09-01T00:00:00Z&end=2025-09-03T00:00:00Z&purpose=source",
                )
                assert code == 200, doc
                assert (doc["purpose"], doc["primary"]) == ("source", US)
                assert _listed(doc) == expected
                # The manifests were read from B's bucket (nothing of them is on its disk).
                manifests_read = await metric(
                    http, db.base_url, "cryptorun_object_store_bytes_total", read
                )
                assert manifests_read > before
                code, doc = await _get(
                    http, f"{base}&start=2025-09-01T00:00:00Z&end=2025-09-02T12:00:00Z"
                )
                assert code == 200, doc
                assert _listed(doc) == {keys[0].relpath: expected[keys[0].relpath]}
                code, doc = await _get(http, f"{base}&purpose=inventory")
                assert code == 200, doc
                assert _listed(doc) == expected
                # Listed again, the manifests are not read from the bucket again.
                assert manifests_read == await metric(
                    http, db.base_url, "cryptorun_object_store_bytes_total", read
                )
                async with run_daemon_process(c.write(), env=aws_env()):
                    # Asked of C (B's listing is the source), then of B itself (B's
                    # own catalog is the source: its bucket's partitions count).
                    sims = [
                        await operator_cli(
                            "replication",
                            "simulate",
                            "--from",
                            US,
                            "--to",
                            AP,
                            "--tier",
                            "cold",
                            "--window",
                            "2025-09-01T00:00:00Z/2025-09-03T00:00:00Z",
                            "--admin-url",
                            asked.base_url,
                            "--json",
                        )
                        for asked in (c, db)
                    ]
                for sim in sims:
                    assert sim.returncode == 0, sim.stdout + sim.stderr
                    plan = json.loads(sim.stdout)
                    # C also replicates from B on its own: each partition is either still
                    # to copy or already in sync, and both are in the plan either way.
                    summary = plan["summary"]
                    assert summary["partitions"] + summary["in_sync"] == len(keys), plan
                    planned = {p["partition"] for s in plan["steps"] for p in s["partitions"]}
                    assert planned <= set(expected), plan
        assert not any(key.directory(b.storage_root).exists() for key in keys)


async def test_demoted_bucket_only_region_serves_legitimate_old_epoch_partitions_from_its_bucket(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """B holds two cold partitions A sealed at epoch 1 only in its bucket, plus one its
    bucket got stamped by A at epoch 2 (when B was primary: not legitimate). B is promoted
    (epoch 2): a reconciliation request for epoch 2 is 409 conflict (it has not ended).
    B is demoted again (A promoted, epoch 3): B's reconcile listing for epoch 2 names the
    two legitimate partitions, not the third; it serves a legitimate file from its bucket
    byte-identical to A's and refuses the illegitimate one (409 fenced). A, which lost one
    of its partitions from disk while down, rejoins as primary and pulls it back from B's
    bucket through reconciliation, byte-identical; B's disk never holds any of them."""
    a, b, _c = _three_regions(tmp_path)
    keys = [_key(1), _key(2)]
    lost = keys[1]
    stamped = _key(4)
    with running_s3_server(tmp_path) as other:
        async with aiohttp.ClientSession() as http:
            async with _b_holding_a_partitions_in_its_bucket(
                s3_server, other, http, a, b, keys
            ) as db:
                expected = _sealed_at(a.storage_root, keys)
                originals = {
                    name: (lost.directory(a.storage_root) / name).read_bytes()
                    for name in (DATA, MANIFEST_NAME)
                }
                # A partition stamped by A at epoch 2, when B was the primary: it lands
                # in B's bucket and index as a late write of the old primary would.
                scratch = tmp_path / "scratch"
                write_trade_partition(scratch, stamped, rows=1_000, seed=7)
                manifest = seal_partition(stamped.directory(scratch), writer_region=EU, epoch=2)
                b_bucket = TierBucket("cold", other.tier_config(US, prefix="pr"))
                for name in (DATA, MANIFEST_NAME, SUCCESS_MARKER):
                    data = (stamped.directory(scratch) / name).read_bytes()
                    await b_bucket.put(object_key(stamped, name), data)
                index = bucket_index(b.storage_root, "cold")
                try:
                    index.record_sealed(manifest)
                finally:
                    index.close()

                code, doc = await post_failover(
                    http,
                    db.base_url,
                    {"tier": "cold", "promote": US, "demote": EU, "dry_run": False},
                )
                assert (code, doc.get("epoch")) == (200, 2), doc
                base = f"{b.base_url}/v1/partitions"
                code, doc = await _get(http, f"{base}?tier=cold&reconcile_epoch=2")
                assert (code, doc["error"]) == (409, "conflict"), doc

                code, doc = await post_failover(
                    http,
                    db.base_url,
                    {"tier": "cold", "promote": EU, "demote": US, "dry_run": False},
                )
                assert (code, doc.get("epoch")) == (200, 3), doc
                code, doc = await _get(http, f"{base}?tier=cold&reconcile_epoch=2")
                assert code == 200, doc
                assert doc["purpose"] == "reconcile"
                assert _listed(doc) == expected
                code, body = await _get(
                    http, f"{base}/cold/{keys[0].relpath}/{DATA}?reconcile_epoch=2"
                )
                assert code == 200, body
                assert body == (keys[0].directory(a.storage_root) / DATA).read_bytes()
                for name in (DATA, MANIFEST_NAME):
                    code, doc = await _get(
                        http, f"{base}/cold/{stamped.relpath}/{name}?reconcile_epoch=2"
                    )
                    assert (code, doc["error"]) == (409, "fenced"), doc

                # A lost a partition from its disk while down, and rejoins as primary.
                shutil.rmtree(lost.directory(a.storage_root))
                async with run_daemon_process(a.write(), env=aws_env()) as da:
                    await _cold_view_is(http, da.base_url, EU, 3)

                    pulled = await _reconciled_into(
                        http, da.base_url, US, lost.directory(a.storage_root)
                    )
                    assert pulled == 1.0
        for name, data in originals.items():
            assert (lost.directory(a.storage_root) / name).read_bytes() == data
        assert not stamped.directory(a.storage_root).exists()
        assert not any(k.directory(b.storage_root).exists() for k in [*keys, stamped])


async def test_a_bucket_held_new_primary_reconciles_only_what_its_bucket_lacks(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """B holds two cold partitions A sealed, only in its bucket. While A is down it seals a
    third one B never received (epoch 1, before the failover). B is promoted (epoch 2) and
    A comes back demoted. B's reconciliation with A pulls the third partition, byte-identical,
    and nothing else: the two its bucket already holds count as held although its disk has
    none of them (before, it pulled all three onto its disk)."""
    a, b, _c = _three_regions(tmp_path)
    keys = [_key(1), _key(2)]
    missed = _key(3)
    with running_s3_server(tmp_path) as other:
        async with aiohttp.ClientSession() as http:
            async with _b_holding_a_partitions_in_its_bucket(
                s3_server, other, http, a, b, keys
            ) as db:
                # Sealed at A (epoch 1, A still the primary) while B could not see it.
                write_trade_partition(a.storage_root, missed, rows=2_000, seed=5)
                seal_partition(missed.directory(a.storage_root), writer_region=EU, epoch=1)
                code, doc = await post_failover(
                    http,
                    db.base_url,
                    {"tier": "cold", "promote": US, "demote": EU, "dry_run": False},
                )
                assert (code, doc.get("epoch")) == (200, 2), doc
                async with run_daemon_process(a.write(), env=aws_env()) as da:
                    await _cold_view_is(http, da.base_url, US, 2)

                    await _reconciled_into(http, db.base_url, EU, missed.directory(b.storage_root))
                    # One more pass pulls nothing more.
                    assert await _reconcile_pass(http, db.base_url, EU) == 200
                    assert await _reconciled_pulls(http, db.base_url) == 1.0
        for name in (DATA, MANIFEST_NAME):
            assert (missed.directory(b.storage_root) / name).read_bytes() == (
                missed.directory(a.storage_root) / name
            ).read_bytes()
        assert not any(key.directory(b.storage_root).exists() for key in keys)
