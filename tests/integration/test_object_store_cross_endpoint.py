"""Bucket → bucket across endpoints in the daemon: two moto servers, two real daemons.

Region A keeps its cold tier in a bucket on one S3 endpoint, region B in a
bucket on another; B names A's bucket as its source. B's pull link streams
each partition object → object through the daemon (no local copy), verified
against the manifest hash, committed with the fenced conditional writes.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptorun_daemon.config import ObjectStoreTier
from cryptorun_daemon.data.validate.batch import validate_table
from cryptorun_daemon.storage.bucket_commit import BucketFence
from cryptorun_daemon.storage.layout import (
    MANIFEST_NAME,
    SPOOL_DIR,
    SUCCESS_MARKER,
    PartitionKey,
    object_key,
    quarantine_dir,
)
from cryptorun_daemon.storage.object_store import TierBucket
from cryptorun_daemon.storage.quarantine_record import error_record_path
from cryptorun_daemon.storage.quarantine_sidecar import SIDECAR_NAME
from tests.harness.admin import metric, seal_when_accepted
from tests.harness.daemons import run_daemon_process, two_regions
from tests.harness.s3 import (
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    S3Server,
    aws_credentials,
    aws_env,
    running_s3_server,
    s3_server,
    tier_section,
)
from tests.harness.testdata import partition_trades, write_trade_partition
from tests.harness.wait import eventually

__all__ = ["aws_credentials", "s3_server"]  # pytest fixtures used by name

pytestmark = pytest.mark.slow


def _key(day: int) -> PartitionKey:
    return PartitionKey(
        day=datetime(2025, 9, day, tzinfo=UTC).date(),
        hour=None,
        tier="cold",
        dataset="trade",
        venue="kraken",
        symbol="BTC-USD",
    )


GOOD, CORRUPT = _key(1), _key(2)
DATA = "part-0000.parquet"


def _tier_section(config: ObjectStoreTier) -> dict[str, object]:
    # 5 MiB parts: a file over 5 MiB goes through the streamed multipart path.
    return tier_section(config, multipart_threshold=5 << 20, part_size=5 << 20)


def _big_partition(root: Path, key: PartitionKey, rows: int) -> int:
    """One cold partition file of ``rows`` valid trades, uncompressed; returns its size."""
    directory = write_trade_partition(root, key, rows=rows, compression="none")
    return (directory / DATA).stat().st_size


async def _exists(bucket: TierBucket, relative: str) -> bool:
    return await bucket.head(relative) is not None


async def test_replica_streams_bucket_to_bucket_across_endpoints_and_refuses_a_corrupt_source(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """A's cold bucket is on one moto server, B's on another. An 11 MB partition sealed at
    A reaches B's bucket byte-identical through B's daemon (multipart, streamed object →
    object), with no copy of it on B's disk, behind B's bucket fence object (epoch 1, primary
    eu-central), its bytes counted as replicated. A second
    partition whose object in A's bucket was corrupted after A's commit is never committed
    in B's bucket (no manifest, no marker, no data object), counted as corrupt and as a
    failed step, its corrupt copy kept in B's quarantine under its partition path; the
    credentials never appear in either log."""
    a, b = two_regions(
        tmp_path,
        rules=[{"tier": "cold", "from": "eu-central", "to": ["us-east"], "lag_slo": "5m"}],
    )
    with running_s3_server(tmp_path) as other:
        a_config = s3_server.tier_config("eu-central", prefix="xe")
        b_config = other.tier_config("us-east", prefix="xe")
        a.sections["storage.tiers.cold"] = _tier_section(a_config)
        b.sections["storage.tiers.cold"] = _tier_section(b_config)
        b.sections["storage.sources.eu-central.cold"] = _tier_section(a_config)
        for spec in (a, b):
            spec.sections["replication"] = {"feed_poll_interval": "200ms"}
        a_bucket, b_bucket = TierBucket("cold", a_config), TierBucket("cold", b_config)
        async with (
            run_daemon_process(a.write(), env=aws_env()) as da,
            run_daemon_process(b.write(), env=aws_env()) as db,
            aiohttp.ClientSession() as http,
        ):
            size = _big_partition(a.storage_root, GOOD, 200_000)  # ~11 MB: three parts
            await seal_when_accepted(http, a.base_url, "cold", GOOD.relpath)
            await eventually(
                lambda: _exists(b_bucket, object_key(GOOD, SUCCESS_MARKER)),
                "the partition in B's bucket",
                timeout=90,
            )
            local = (GOOD.directory(a.storage_root) / DATA).read_bytes()
            body, _ = await b_bucket.get(object_key(GOOD, DATA))
            assert body == local
            manifest, _ = await b_bucket.get(object_key(GOOD, MANIFEST_NAME))
            assert manifest == (GOOD.directory(a.storage_root) / MANIFEST_NAME).read_bytes()
            assert not GOOD.directory(b.storage_root).exists()  # no detour through B's disk
            # Committed behind B's bucket fence, claimed at B's view of the tier.
            fence = await BucketFence(b_bucket).read()
            assert fence is not None
            assert fence[:2] == (1, "eu-central")
            pair = {"tier": "cold", "from": "eu-central", "to": "us-east"}
            assert await metric(http, db.base_url, "cryptorun_replication_bytes_total", pair) >= (
                size
            )

            # B paused: A's commit of the second partition cannot race the corruption.
            db.proc.send_signal(signal.SIGSTOP)
            try:
                _big_partition(a.storage_root, CORRUPT, 100_000)
                await seal_when_accepted(http, a.base_url, "cold", CORRUPT.relpath)
                await eventually(
                    lambda: _exists(a_bucket, object_key(CORRUPT, SUCCESS_MARKER)),
                    "the second partition in A's bucket",
                    timeout=60,
                )
                data, _ = await a_bucket.get(object_key(CORRUPT, DATA))
                flipped = bytearray(data)
                flipped[len(flipped) // 2] ^= 0xFF
                await a_bucket.put(object_key(CORRUPT, DATA), flipped)
            finally:
                db.proc.send_signal(signal.SIGCONT)

            async def counted() -> bool:
                errors = await metric(
                    http,
                    db.base_url,
                    "cryptorun_data_consistency_errors_total",
                    {"check": "corrupt"},
                )
                failed = await metric(
                    http,
                    db.base_url,
                    "cryptorun_replication_step_failures_total",
                    {**pair, "reason": "corrupt"},
                )
                return errors >= 1 and failed >= 1

            await eventually(counted, "the corrupt source counted at B", timeout=60)
            for name in (MANIFEST_NAME, SUCCESS_MARKER, DATA):
                assert not await _exists(b_bucket, object_key(CORRUPT, name))
            assert not CORRUPT.directory(b.storage_root).exists()
            # The corrupt copy is kept, under its partition path like on disk.
            kept = quarantine_dir(b.storage_root, "cold", "us-east", CORRUPT)
            assert list(kept.glob(f".{DATA}.partial*"))
            logs = da.log_text() + db.log_text()
    assert "partition streamed bucket to bucket" in logs
    assert TEST_SECRET_KEY not in logs
    assert TEST_ACCESS_KEY not in logs


FLAGGED, WRONG_SCHEMA = _key(3), _key(4)
FLAGGED_ROWS = (5, 6, 7, 400)


def _flagged_partition(root: Path) -> pa.Table:
    """A cold partition whose rows ``FLAGGED_ROWS`` have a negative price; returns its table."""
    table = partition_trades(FLAGGED, 1_000, origin="eu-central", seed=3)
    prices = table.column("price").to_numpy().copy()
    prices[list(FLAGGED_ROWS)] = -1.0
    table = table.set_column(table.schema.get_field_index("price"), "price", pa.array(prices))
    directory = FLAGGED.directory(root)
    directory.mkdir(parents=True)
    pq.write_table(table, directory / DATA)
    return table


def _wrong_schema_partition(root: Path) -> None:
    """A cold partition whose file lacks the ``qty`` column (a file-level schema failure)."""
    table = partition_trades(WRONG_SCHEMA, 1_000, origin="eu-central", seed=4).drop(["qty"])
    directory = WRONG_SCHEMA.directory(root)
    directory.mkdir(parents=True)
    pq.write_table(table, directory / DATA)


async def test_bucket_to_bucket_replica_validates_like_disk_before_committing(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Region A (primary, seals without judging) commits two bad cold partitions into its
    bucket; B streams A's bucket into its own on another endpoint. B's step validators see
    both before its commit point, with the disk's rules: the partition with four negative
    prices is committed in B's bucket byte-identical, with ``_quarantine.json`` beside it
    naming exactly the rows the disk validator flags; the file missing a column is never
    committed in B's bucket (no data, manifest or marker) but quarantined in B's
    ``_quarantine/cold/us-east/<partition>/`` with its ``.error.json`` (check ``schema``),
    counted in ``cryptorun_validation_errors_total{check,tier,region}`` and as a
    ``validation`` step failure. The spool holds no data file afterwards."""
    a, b = two_regions(
        tmp_path,
        rules=[{"tier": "cold", "from": "eu-central", "to": ["us-east"], "lag_slo": "5m"}],
    )
    with running_s3_server(tmp_path) as other:
        a_config = s3_server.tier_config("eu-central", prefix="xv")
        b_config = other.tier_config("us-east", prefix="xv")
        a.sections["storage.tiers.cold"] = _tier_section(a_config)
        b.sections["storage.tiers.cold"] = _tier_section(b_config)
        b.sections["storage.sources.eu-central.cold"] = _tier_section(a_config)
        for spec in (a, b):
            spec.sections["replication"] = {"feed_poll_interval": "200ms"}
        b_bucket = TierBucket("cold", b_config)
        async with (
            run_daemon_process(a.write(), env=aws_env()),
            run_daemon_process(b.write(), env=aws_env()) as db,
            aiohttp.ClientSession() as http,
        ):
            table = _flagged_partition(a.storage_root)
            _wrong_schema_partition(a.storage_root)
            for key in (FLAGGED, WRONG_SCHEMA):
                await seal_when_accepted(http, a.base_url, "cold", key.relpath)
            await eventually(
                lambda: _exists(b_bucket, object_key(FLAGGED, SUCCESS_MARKER)),
                "the flagged partition committed in B's bucket",
                timeout=90,
            )
            body, _ = await b_bucket.get(object_key(FLAGGED, DATA))
            assert body == (FLAGGED.directory(a.storage_root) / DATA).read_bytes()
            raw, _ = await b_bucket.get(object_key(FLAGGED, SIDECAR_NAME))
            entry = json.loads(raw)["files"][DATA]
            expected = validate_table(table, dataset="trade", tier="cold").result
            assert entry["flagged_rows"] == expected.flagged == len(FLAGGED_ROWS)
            assert entry["region"] == "us-east"
            rows = sorted(
                row
                for finding in entry["findings"]
                for start, stop in finding["rows"]
                for row in range(start, stop)
            )
            assert rows == list(FLAGGED_ROWS)

            schema_errors = {"check": "schema", "tier": "cold", "region": "us-east"}
            failed = {"tier": "cold", "from": "eu-central", "to": "us-east"}

            async def refused() -> bool:
                errors = await metric(
                    http, db.base_url, "cryptorun_validation_errors_total", schema_errors
                )
                steps = await metric(
                    http,
                    db.base_url,
                    "cryptorun_replication_step_failures_total",
                    {**failed, "reason": "validation"},
                )
                return errors >= 1 and steps >= 1

            await eventually(refused, "the wrong-schema partition refused at B", timeout=60)
            for name in (MANIFEST_NAME, SUCCESS_MARKER, DATA):
                assert not await _exists(b_bucket, object_key(WRONG_SCHEMA, name))
            quarantined = quarantine_dir(b.storage_root, "cold", "us-east", WRONG_SCHEMA) / DATA
            assert (
                quarantined.read_bytes()
                == (WRONG_SCHEMA.directory(a.storage_root) / DATA).read_bytes()
            )
            record = json.loads(error_record_path(quarantined).read_text())
            assert record["errors"][0]["check"] == "schema"
            assert record["tier"] == "cold"
            assert record["region"] == "us-east"
            assert not list((b.storage_root / SPOOL_DIR).rglob("*.parquet"))
            assert not FLAGGED.directory(b.storage_root).exists()  # nothing in B's disk tier
