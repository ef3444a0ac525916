"""Daemons with object-store cold tiers: two real daemon processes, one bucket per region.

The primary's sealed partition lands in its bucket through the daemon's own
write path (seal endpoint → change feed → object_store worker); the replica
pulls it as always and its committed copy lands in the replica's bucket.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptorun_daemon.storage.bucket_commit import BucketFence
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, PartitionKey, object_key
from cryptorun_daemon.storage.object_store import TierBucket
from cryptorun_daemon.storage.quarantine_sidecar import SIDECAR_NAME
from tests.harness.admin import auth_headers, metric, seal_when_accepted
from tests.harness.daemons import (
    RegionSpec,
    run_daemon_process,
    start_daemon_process,
    stop_process,
    two_regions,
    wait_until_ready,
)
from tests.harness.s3 import (
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    S3Server,
    aws_credentials,
    aws_env,
    s3_server,
    tier_section,
)
from tests.harness.testdata import partition_trades, write_trade_partition
from tests.harness.wait import eventually

__all__ = ["aws_credentials", "s3_server"]  # pytest fixtures used by name

pytestmark = pytest.mark.slow

KEY = PartitionKey(
    day=datetime(2025, 9, 1, tzinfo=UTC).date(),
    hour=None,
    tier="cold",
    dataset="trade",
    venue="kraken",
    symbol="BTC-USD",
)


def _with_cold_bucket(spec: RegionSpec, server: S3Server, prefix: str = "tiers") -> None:
    """``spec``'s cold tier in its region's bucket under ``prefix`` (one per test: the
    server is shared by the module)."""
    spec.sections["storage.tiers.cold"] = tier_section(
        server.tier_config(spec.region, prefix=prefix)
    )
    spec.sections["replication"] = {"feed_poll_interval": "200ms"}


async def _has_success(bucket: TierBucket) -> bool:
    return await bucket.head(object_key(KEY, SUCCESS_MARKER)) is not None


async def test_sealed_cold_partition_lands_in_both_regions_buckets(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Seal at the primary → its bucket holds the partition (manifest byte-identical to
    disk, _SUCCESS); the replica reads the files from A's bucket into its local cache and
    copies them server-side into its own bucket (no data bytes uploaded by B), which then
    holds the same manifest; status shows each tier's backend (URL, no credentials), bytes
    pending drop to 0, and neither daemon's log holds the access key or the secret."""
    a, b = two_regions(
        tmp_path,
        rules=[{"tier": "cold", "from": "eu-central", "to": ["us-east"], "lag_slo": "5m"}],
    )
    for spec in (a, b):
        _with_cold_bucket(spec, s3_server)
    # B reads the tier's files from A's bucket (bucket → disk) and, the endpoint being the
    # same, copies them into its own bucket server-side (bucket → bucket).
    b.sections["storage.sources.eu-central.cold"] = dict(b.sections["storage.tiers.cold"])
    b.sections["storage.sources.eu-central.cold"]["url"] = a.sections["storage.tiers.cold"]["url"]
    a_bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="tiers"))
    b_bucket = TierBucket("cold", s3_server.tier_config("us-east", prefix="tiers"))
    env = aws_env()
    async with (
        run_daemon_process(a.write(), env=env) as da,
        run_daemon_process(b.write(), env=env) as db,
        aiohttp.ClientSession() as http,
    ):
        write_trade_partition(a.storage_root, KEY, rows=2000, files=2)
        await seal_when_accepted(http, a.base_url, "cold", KEY.relpath)

        await eventually(lambda: _has_success(a_bucket), "the partition in A's bucket", timeout=30)
        await eventually(lambda: _has_success(b_bucket), "the partition in B's bucket", timeout=60)

        disk_manifest = (KEY.directory(a.storage_root) / MANIFEST_NAME).read_bytes()
        for bucket in (a_bucket, b_bucket):
            body, _ = await bucket.get(object_key(KEY, MANIFEST_NAME))
            assert body == disk_manifest

        async with http.get(f"{a.base_url}/v1/status", headers=auth_headers()) as resp:
            status: dict[str, Any] = await resp.json()
        backend = status["tiers"]["cold"]["backend"]
        assert backend["kind"] == "s3"
        assert backend["url"] == "s3://cryptorun-eu-central/tiers"
        assert backend["conditional_writes"] is True
        assert status["tiers"]["warm"]["backend"]["kind"] == "disk"

        async def nothing_pending() -> bool:
            value = await metric(
                http,
                da.base_url,
                "cryptorun_replication_bytes_pending",
                {"tier": "cold", "region": "eu-central"},
            )
            return value == 0.0

        await eventually(nothing_pending, "no bytes pending at A")
        data_bytes = sum(
            p.stat().st_size for p in KEY.directory(a.storage_root).glob("part-*.parquet")
        )
        labels = {"tier": "cold", "op": "get"}
        got = await metric(http, db.base_url, "cryptorun_object_store_bytes_total", labels)
        labels["op"] = "put"
        put = await metric(http, db.base_url, "cryptorun_object_store_bytes_total", labels)
        # Read from A's bucket, then read back after the server-side copy; only the
        # manifest, markers and fence object were PUT by B.
        assert got >= 2 * data_bytes
        assert put < data_bytes
        logs = da.log_text() + db.log_text()
    assert "partition committed to bucket" in logs
    assert TEST_SECRET_KEY not in logs
    assert TEST_ACCESS_KEY not in logs


async def test_a_late_commit_after_a_newer_epoch_reached_the_bucket_is_refused_by_the_store(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """The primary daemon (epoch 1 in its own view) shares its cold bucket with a region
    promoted meanwhile, which wrote epoch 2 into the bucket's fence object. The primary's
    next seal is committed on its disk but its object_store worker is refused by the store's
    conditional write: no _SUCCESS in the bucket, the refusal counted and shown in status."""
    a, b = two_regions(
        tmp_path,
        rules=[{"tier": "cold", "from": "eu-central", "to": ["us-east"], "lag_slo": "5m"}],
    )
    _with_cold_bucket(a, s3_server, prefix="late")
    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="late"))
    async with (
        run_daemon_process(a.write(), env=aws_env()) as da,
        run_daemon_process(b.write(), env=aws_env()),
        aiohttp.ClientSession() as http,
    ):
        # The promoted region's claim, written straight into the shared bucket.
        await BucketFence(bucket).claim(2, "us-east")
        write_trade_partition(a.storage_root, KEY, rows=500)
        await seal_when_accepted(http, a.base_url, "cold", KEY.relpath)

        async def refused() -> bool:
            async with http.get(f"{a.base_url}/v1/status", headers=auth_headers()) as resp:
                doc: dict[str, Any] = await resp.json()
            error = doc["tiers"]["cold"]["backend"]["last_error"] or ""
            return "FencedError" in error and "holds epoch 2" in error

        await eventually(refused, "A's bucket commit refused", timeout=30)
        fenced = await metric(
            http, da.base_url, "cryptorun_fenced_total", {"tier": "cold", "operation": "seal"}
        )
        assert fenced >= 1
    assert (KEY.directory(a.storage_root) / SUCCESS_MARKER).exists()  # sealed on its disk
    assert await bucket.head(object_key(KEY, SUCCESS_MARKER)) is None
    assert await bucket.head(object_key(KEY, MANIFEST_NAME)) is None


def _big_partition(root: Path, size: int) -> int:
    """One cold partition file of about ``size`` incompressible bytes; returns its size."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = KEY.directory(root)
    directory.mkdir(parents=True, exist_ok=True)
    rows = size // 4096
    table = pa.table({"blob": pa.array([os.urandom(4096) for _ in range(rows)], pa.binary())})
    path = directory / "part-0000.parquet"
    pq.write_table(table, path, compression="none")
    return path.stat().st_size


async def test_kill_9_mid_multipart_then_restart_resumes_without_resending_parts(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """The primary daemon dies (kill -9 equivalent: the multipart.after_part fail point)
    right after the first 5 MiB part of a 12 MiB file reached the bucket; restarted, it
    resumes the upload: the file completes byte-identical and the restarted daemon PUT
    fewer bytes than the file holds."""
    a, b = two_regions(
        tmp_path,
        rules=[{"tier": "cold", "from": "eu-central", "to": ["us-east"], "lag_slo": "5m"}],
    )
    _with_cold_bucket(a, s3_server, prefix="kill9")
    a.sections["storage.tiers.cold"].update(
        {
            "multipart_threshold": 5 << 20,
            "part_size": 5 << 20,
        }
    )
    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="kill9"))
    a_config = a.write()
    crash_env = {**aws_env(), "CRYPTORUN_FAILPOINTS": "multipart.after_part=exit"}
    async with run_daemon_process(b.write(), env=aws_env()), aiohttp.ClientSession() as http:
        proc = start_daemon_process(a_config, env=crash_env, log_name="a-crash.log")
        try:
            await wait_until_ready(a.base_url, proc=proc, log_path=a.directory / "a-crash.log")
            size = _big_partition(a.storage_root, 12 << 20)
            await seal_when_accepted(http, a.base_url, "cold", KEY.relpath)
            await eventually(lambda: proc.poll() is not None, "A to die at the fail point")
            assert proc.returncode == 86
        finally:
            stop_process(proc)
        assert await bucket.head(object_key(KEY, "part-0000.parquet")) is None
        assert list((a.storage_root / "_state/multipart/cold").glob("*.json"))

        async with run_daemon_process(a_config, env=aws_env()) as da:
            await eventually(
                lambda: _exists(bucket, object_key(KEY, SUCCESS_MARKER)),
                "the resumed commit",
                timeout=60,
            )
            put = await metric(
                http,
                da.base_url,
                "cryptorun_object_store_bytes_total",
                {"tier": "cold", "op": "put"},
            )
    body, _ = await bucket.get(object_key(KEY, "part-0000.parquet"))
    assert body == (KEY.directory(a.storage_root) / "part-0000.parquet").read_bytes()
    assert put < size
    assert list((a.storage_root / "_state/multipart/cold").glob("*.json")) == []


async def _exists(bucket: TierBucket, relative: str) -> bool:
    return await bucket.head(relative) is not None


async def test_same_endpoint_replica_commits_its_row_quarantine_sidecar_into_its_bucket(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """A seals (without judging) a cold partition whose rows 3 and 9 have a negative
    price. B, whose bucket is on A's endpoint, validates its local copy like any disk
    replica (the rows listed in ``_quarantine.json`` beside the file) and commits that
    same sidecar into its bucket with the server-side copy: B's bucket and B's disk give
    readers the same flagged rows, while A's bucket, whose commit nobody judged, has none."""
    a, b = two_regions(
        tmp_path,
        rules=[{"tier": "cold", "from": "eu-central", "to": ["us-east"], "lag_slo": "5m"}],
    )
    for spec in (a, b):
        _with_cold_bucket(spec, s3_server, prefix="sidecar")
    b.sections["storage.sources.eu-central.cold"] = dict(b.sections["storage.tiers.cold"])
    b.sections["storage.sources.eu-central.cold"]["url"] = a.sections["storage.tiers.cold"]["url"]
    a_bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="sidecar"))
    b_bucket = TierBucket("cold", s3_server.tier_config("us-east", prefix="sidecar"))
    async with (
        run_daemon_process(a.write(), env=aws_env()),
        run_daemon_process(b.write(), env=aws_env()),
        aiohttp.ClientSession() as http,
    ):
        directory = KEY.directory(a.storage_root)
        directory.mkdir(parents=True)
        table = partition_trades(KEY, 500, origin="eu-central", seed=7)
        prices = table.column("price").to_numpy().copy()
        prices[[3, 9]] = -1.0
        table = table.set_column(table.schema.get_field_index("price"), "price", pa.array(prices))
        pq.write_table(table, directory / "part-0000.parquet")
        await seal_when_accepted(http, a.base_url, "cold", KEY.relpath)
        await eventually(lambda: _has_success(b_bucket), "the partition in B's bucket", timeout=60)
        on_disk = (KEY.directory(b.storage_root) / SIDECAR_NAME).read_bytes()
        in_bucket, _ = await b_bucket.get(object_key(KEY, SIDECAR_NAME))
        assert in_bucket == on_disk
        entry = json.loads(in_bucket)["files"]["part-0000.parquet"]
        assert entry["flagged_rows"] == 2
        assert entry["region"] == "us-east"
        assert await _has_success(a_bucket)
        assert await a_bucket.head(object_key(KEY, SIDECAR_NAME)) is None
