"""Object-store tiers against a real S3 endpoint (moto's server as a process on loopback).

Covers deliverables 1, 2, 4 and 5 of issue 18 at the storage layer: the
client wrapper, conditional writes as the test server enforces them, the
fenced bucket commit of a sealed partition, corrupt sources never committed,
and the resumable multipart upload.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cryptorun_daemon.errors import FencedError, ReplicationError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.storage.bucket_commit import (
    BucketCommitter,
    BucketFence,
    bucket_reader,
    enforces_conditional_writes,
    local_reader,
)
from cryptorun_daemon.storage.bucket_source import BucketFileSource
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, object_key
from cryptorun_daemon.storage.manifest import Manifest, hash_bytes, read_manifest
from cryptorun_daemon.storage.multipart import MultipartUploader, UploadCorruptError
from cryptorun_daemon.storage.object_store import ConditionFailedError, TierBucket
from tests.harness.s3 import TEST_ACCESS_KEY, S3Server, aws_credentials, aws_env, s3_server
from tests.harness.testdata import seed_partitions
from tests.harness.tools import missing_tool

__all__ = ["aws_credentials", "s3_server"]  # pytest fixtures used by name

REPO = Path(__file__).resolve().parents[2]
DAY = datetime(2025, 9, 1, tzinfo=UTC)


def _counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _keys(bucket: TierBucket, prefix: str) -> list[str]:
    return sorted([info.key async for info in bucket.list(prefix)])


async def test_the_test_server_enforces_if_none_match_and_if_match(
    s3_server: S3Server, aws_credentials: str
) -> None:
    """moto refuses a second create (If-None-Match: *) and a replace with a stale ETag
    (If-Match), so the fencing tests below test the store, not our process."""
    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="probe"))
    assert await enforces_conditional_writes(bucket)
    first = await bucket.put("x.json", b"1", mode="create")
    with pytest.raises(ConditionFailedError):
        await bucket.put("x.json", b"2", mode="create")
    second = await bucket.put("x.json", b"2", if_match=first)
    with pytest.raises(ConditionFailedError):
        await bucket.put("x.json", b"3", if_match=first)
    assert (await bucket.get("x.json")) == (b"2", second)


async def test_sealed_partition_lands_in_the_bucket_with_the_disk_layout(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """A sealed cold partition is committed to the bucket under the same keys as on disk
    (part-*.parquet, byte-identical _manifest.json, _SUCCESS last), readable by pyarrow;
    a second commit of the same content sends nothing."""
    root = tmp_path / "eu"
    [directory] = seed_partitions(root, tier="cold", start=DAY, count=1, files=2)
    manifest = read_manifest(directory)
    metrics = Metrics()
    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="seal"), metrics=metrics)
    committer = BucketCommitter(bucket, root, metrics)
    token = await committer.fence.claim(1, "eu-central")

    report = await committer.commit(manifest, local_reader(directory), token)

    assert report.committed
    assert report.sent == manifest.total_bytes
    prefix = f"cold/{manifest.key.relpath}/"
    assert await _keys(bucket, prefix) == sorted(
        [prefix + MANIFEST_NAME, prefix + SUCCESS_MARKER]
        + [prefix + f.name for f in manifest.files]
    )
    body, _ = await bucket.get(object_key(manifest.key, MANIFEST_NAME))
    assert body == (directory / MANIFEST_NAME).read_bytes()
    for entry in manifest.files:
        data, _ = await bucket.get(object_key(manifest.key, entry.name))
        assert hash_bytes(data) == entry.hash
        local = pq.read_table(directory / entry.name)
        assert local.num_rows == entry.rows
    again = await committer.commit(manifest, local_reader(directory), token)
    assert again.already
    assert again.sent == 0
    fence = await BucketFence(bucket).read()
    assert fence is not None
    assert fence[:2] == (1, "eu-central")


async def test_a_demoted_primarys_late_commit_is_refused_by_the_store(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """The old primary holds a claim at epoch 1; the new primary advances the fence object
    to epoch 2 (If-Match); the old primary's commit then fails at the store's conditional
    write: FencedError, counted, and no _SUCCESS for its partition."""
    root = tmp_path / "eu"
    [directory] = seed_partitions(root, tier="cold", start=DAY, count=1)
    manifest = read_manifest(directory)
    metrics = Metrics()
    config = s3_server.tier_config("eu-central", prefix="fence")
    old = BucketCommitter(TierBucket("cold", config, metrics=metrics), root, metrics)
    new = BucketFence(TierBucket("cold", config))

    stale = await old.fence.claim(1, "eu-central")
    promoted = await new.claim(2, "us-east")
    assert promoted.epoch == 2

    with pytest.raises(FencedError, match="refused the commit"):
        await old.commit(manifest, local_reader(directory), stale)
    assert await old.bucket.head(object_key(manifest.key, SUCCESS_MARKER)) is None
    assert _counter(metrics, "cryptorun_fenced_total", tier="cold", operation="seal") == 1
    # And a fresh claim at the old epoch is refused before anything is uploaded.
    with pytest.raises(FencedError, match="holds epoch 2"):
        await old.fence.claim(1, "eu-central")


async def test_a_corrupt_source_file_is_never_committed(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """A data file changed after its manifest was written (bit flip on disk) is detected by
    the hash taken while uploading: the commit fails with reason corrupt, the corrupt
    counter moves, and neither the file's object nor any marker is in the bucket."""
    root = tmp_path / "eu"
    [directory] = seed_partitions(root, tier="cold", start=DAY, count=1)
    manifest = read_manifest(directory)
    target = directory / manifest.files[0].name
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    metrics = Metrics()
    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="corrupt"))
    committer = BucketCommitter(bucket, root, metrics)
    token = await committer.fence.claim(1, "eu-central")

    with pytest.raises(ReplicationError) as info:
        await committer.commit(manifest, local_reader(directory), token)

    assert info.value.reason == "corrupt"
    assert _counter(metrics, "cryptorun_data_consistency_errors_total", check="corrupt") == 1
    assert await _keys(bucket, f"cold/{manifest.key.relpath}/") == []


PART = 5 << 20
UPLOAD_SCRIPT = """
import asyncio, sys
from pathlib import Path
from cryptorun_daemon.storage.manifest import hash_bytes
from cryptorun_daemon.storage.multipart import MultipartUploader
from cryptorun_daemon.storage.object_store import TierBucket
from cryptorun_daemon.config import ObjectStoreTier

endpoint, bucket, root, source = sys.argv[1:5]
data = Path(source).read_bytes()
config = ObjectStoreTier(url=f"s3://{bucket}/mp", bucket=bucket, prefix="mp",
    endpoint_url=endpoint, region="us-east-1", allow_http=True, part_size=5 << 20)

async def read(offset, length):
    return data[offset:offset + length]

async def main():
    uploader = MultipartUploader(TierBucket("cold", config), Path(root))
    await uploader.upload("big.bin", size=len(data), content_hash=hash_bytes(data), read=read)

asyncio.run(main())
"""


async def test_multipart_upload_resumes_after_kill_9_without_resending_finished_parts(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """A real process uploading a 3-part object dies (exit at the multipart.after_part fail
    point, i.e. kill -9 after the first part was stored); the next upload lists the
    store's parts, sends only the missing ones, and the object is byte-identical."""
    data = os.urandom(2 * PART + 12345)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    root = tmp_path / "root"
    bucket_name = s3_server.bucket("eu-central")
    env = aws_env()
    env["CRYPTORUN_FAILPOINTS"] = "multipart.after_part=exit"
    env["PYTHONPATH"] = str(REPO)
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            UPLOAD_SCRIPT,
            s3_server.endpoint,
            bucket_name,
            str(root),
            str(source),
        ],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == 86, crashed.stderr.decode()[-2000:]
    states = list((root / "_state/multipart/cold").glob("*.json"))
    assert len(states) == 1
    # The state names the upload; which parts are stored, only the store says.
    assert json.loads(states[0].read_bytes())["upload_id"]

    config = s3_server.tier_config("eu-central", prefix="mp", part_size=PART)
    bucket = TierBucket("cold", config)
    assert await bucket.head("big.bin") is None  # nothing visible before completion

    async def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    # One part was stored before the crash; others may have reached the store too
    # (part uploads overlap): whatever the store lists is reused, never sent again.
    upload_id = json.loads(states[0].read_bytes())["upload_id"]
    stored = bucket.botocore_client().list_parts(
        Bucket=bucket.config.bucket, Key=bucket.key("big.bin"), UploadId=upload_id
    )
    stored_bytes = sum(int(part["Size"]) for part in stored["Parts"])
    assert stored_bytes > 0
    report = await MultipartUploader(bucket, root).upload(
        "big.bin", size=len(data), content_hash=hash_bytes(data), read=read
    )
    assert report.resumed
    assert report.reused == stored_bytes
    assert report.sent == len(data) - stored_bytes
    body, _ = await bucket.get("big.bin")
    assert body == data
    assert list((root / "_state/multipart/cold").glob("*.json")) == []


async def test_multipart_upload_of_wrong_bytes_is_aborted_and_orphans_are_cleaned(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Bytes that do not hash to the manifest value abort the upload (no object appears);
    an unfinished upload nobody resumes is aborted by abort_orphans once old enough."""
    config = s3_server.tier_config("eu-central", prefix="mp2", part_size=PART)
    bucket = TierBucket("cold", config)
    uploader = MultipartUploader(bucket, tmp_path)
    data = os.urandom(PART + 10)

    async def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    with pytest.raises(UploadCorruptError):
        await uploader.upload("x.bin", size=len(data), content_hash=hash_bytes(b"other"), read=read)
    assert await bucket.head("x.bin") is None

    client = bucket.botocore_client()
    client.create_multipart_upload(Bucket=config.bucket, Key=bucket.key("orphan.bin"))
    young = await uploader.abort_orphans(max_age=10 * 365 * 86400.0 * 100)
    assert young == []
    aborted = await uploader.abort_orphans(max_age=0.0)
    assert bucket.key("orphan.bin") in aborted
    listing = client.list_multipart_uploads(Bucket=config.bucket, Prefix=bucket.key(""))
    assert listing.get("Uploads", []) == []


class _Part(bytearray):
    """A part buffer whose lifetime the test can watch (bytearray itself takes no weakref)."""


async def test_concurrent_multipart_uploads_hold_at_most_the_tiers_part_buffers(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Memory of a tier's uploads is bounded by its part buffers, not by the uploads in flight.

    Eight three-part uploads run at once on a tier with two part buffers; every part the
    readers hand out is watched until it is freed. At no moment are more than four alive:
    the two buffers, each possibly still referenced for a moment by the worker thread
    whose request just ended. No upload keeps its last part while it waits for the others
    and for the completion (each did: one more part per upload in flight, up to ten here).
    """
    config = s3_server.tier_config("eu-central", prefix="bounded", part_size=PART, concurrency=4)
    bucket = TierBucket("cold", config)  # max(2, concurrency / 2) = 2 part buffers
    uploader = MultipartUploader(bucket, tmp_path)
    blobs = {f"f{n}.bin": os.urandom(3 * PART - 17) for n in range(8)}
    live = 0
    most = 0

    def freed() -> None:
        nonlocal live
        live -= 1

    def reader(data: bytes) -> Callable[[int, int], Awaitable[bytearray]]:
        async def read(offset: int, length: int) -> bytearray:
            nonlocal live, most
            part = _Part(data[offset : offset + length])
            weakref.finalize(part, freed)
            live += 1
            most = max(most, live)
            await asyncio.sleep(0)  # let the other uploads run between reads
            return part

        return read

    await asyncio.gather(
        *(
            uploader.upload(name, size=len(data), content_hash=hash_bytes(data), read=reader(data))
            for name, data in blobs.items()
        )
    )
    assert bucket.part_buffers._value == 2  # the semaphore is back to its size: nothing held
    assert live == 0
    assert 2 <= most <= 4, f"{most} part buffers were alive at once; the tier has 2"
    for name, data in blobs.items():
        body, _ = await bucket.get(name)
        assert body == data


async def _committed_in(bucket: TierBucket, tmp_path: Path, name: str) -> tuple[Path, Manifest]:
    """A cold partition sealed on disk under ``tmp_path/name`` and committed into ``bucket``."""
    root = tmp_path / name
    [directory] = seed_partitions(root, tier="cold", start=DAY, count=1, files=2)
    manifest = read_manifest(directory)
    committer = BucketCommitter(bucket, root, Metrics())
    token = await committer.fence.claim(1, "eu-central")
    await committer.commit(manifest, local_reader(directory), token)
    return directory, manifest


async def _corrupt_object(bucket: TierBucket, manifest: Manifest) -> None:
    relative = object_key(manifest.key, manifest.files[0].name)
    body, _ = await bucket.get(relative)
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0xFF
    await bucket.put(relative, bytes(flipped))


@pytest.mark.parametrize("server_side", [False, True])
async def test_bucket_to_bucket_copies_verified_and_never_commits_a_corrupt_source(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path, server_side: bool
) -> None:
    """Region A's bucket → region B's bucket, streamed through the process (ranged GETs,
    hashed on the way) or server-side (same endpoint; read back and hashed): the copy is
    committed with A's manifest bytes; after an object at A is corrupted, a commit to a
    fresh prefix fails with reason corrupt, is counted, and leaves no object or marker."""
    source = TierBucket("cold", s3_server.tier_config("eu-central", prefix=f"b2b-{server_side}"))
    _, manifest = await _committed_in(source, tmp_path, "a")
    metrics = Metrics()
    target = TierBucket(
        "cold", s3_server.tier_config("us-east", prefix=f"b2b-{server_side}"), metrics=metrics
    )
    committer = BucketCommitter(target, tmp_path / "b", metrics)
    token = await committer.fence.claim(1, "eu-central")
    assert target.same_endpoint(source)
    copy_source = source if server_side else None

    report = await committer.commit(manifest, bucket_reader(source), token, copy_source=copy_source)
    assert report.committed
    assert report.sent == (0 if server_side else manifest.total_bytes)
    body, _ = await target.get(object_key(manifest.key, MANIFEST_NAME))
    assert body == manifest.to_bytes()

    await _corrupt_object(source, manifest)
    fresh = TierBucket("cold", s3_server.tier_config("us-east", prefix=f"b2b-fresh-{server_side}"))
    committer = BucketCommitter(fresh, tmp_path / "b", metrics)
    token = await committer.fence.claim(1, "eu-central")
    with pytest.raises(ReplicationError) as info:
        await committer.commit(manifest, bucket_reader(source), token, copy_source=copy_source)
    assert info.value.reason == "corrupt"
    assert _counter(metrics, "cryptorun_data_consistency_errors_total", check="corrupt") == 1
    remaining = await _keys(fresh, f"cold/{manifest.key.relpath}/")
    assert MANIFEST_NAME not in " ".join(remaining)
    assert object_key(manifest.key, manifest.files[0].name) not in remaining


async def test_bucket_to_disk_through_the_replication_executor(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """A replica's executor reading from the source region's bucket (BucketFileSource)
    commits a verified local copy (same manifest bytes, sealed); a corrupt object at the
    source is quarantined and counted, and that partition is not committed."""
    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="b2d"))
    directory, manifest = await _committed_in(bucket, tmp_path, "a")
    metrics = Metrics()
    replica = tmp_path / "replica"
    executor = WarmColdExecutor(
        root=replica,
        region="us-east",
        source=BucketFileSource("eu-central", bucket),
        metrics=metrics,
        retry_attempts=2,
        retry_backoff=0.01,
    )
    pulled = await executor.replicate_partition(manifest)
    assert pulled == manifest.total_bytes
    local = manifest.key.directory(replica)
    assert (local / MANIFEST_NAME).read_bytes() == (directory / MANIFEST_NAME).read_bytes()
    assert (local / SUCCESS_MARKER).exists()

    await _corrupt_object(bucket, manifest)
    other = tmp_path / "replica2"
    executor = WarmColdExecutor(
        root=other,
        region="us-east",
        source=BucketFileSource("eu-central", bucket),
        metrics=metrics,
        retry_attempts=2,
        retry_backoff=0.01,
    )
    with pytest.raises(ReplicationError) as info:
        await executor.replicate_partition(manifest)
    assert info.value.reason == "corrupt"
    assert not (manifest.key.directory(other) / SUCCESS_MARKER).exists()
    assert _counter(metrics, "cryptorun_data_consistency_errors_total", check="corrupt") == 2
    assert list((other / "_quarantine").rglob("*.error.json"))


async def test_pyarrow_reads_the_bucket_with_the_same_hive_partitioning(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """pyarrow.dataset over the bucket (its own S3 filesystem, not our code) sees the
    committed files with the hive keys venue, symbol and date, and the same rows as on disk."""
    import pyarrow.dataset as ds
    from pyarrow.fs import S3FileSystem

    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="hive"))
    directory, manifest = await _committed_in(bucket, tmp_path, "a")
    filesystem = S3FileSystem(
        access_key=TEST_ACCESS_KEY,
        secret_key=aws_credentials,
        endpoint_override=s3_server.endpoint.removeprefix("http://"),
        scheme="http",
        region="us-east-1",
    )
    dataset = ds.dataset(
        f"{bucket.config.bucket}/hive/cold/trade",
        filesystem=filesystem,
        format="parquet",
        partitioning="hive",
        exclude_invalid_files=True,
    )
    table = dataset.to_table()
    assert table.num_rows == manifest.total_rows
    assert {"venue", "date"} <= set(table.column_names)
    assert set(table.column("venue").to_pylist()) == {"kraken"}
    local = ds.dataset(str(directory), format="parquet").to_table()
    assert table.num_rows == local.num_rows


def _httpfs_extension_directory() -> Path:
    """The extension directory the ``duckdb-ext-httpfs`` package installs for this DuckDB.

    DuckDB normally downloads httpfs on first use from its own host, which the
    package registries do not include; the package ships the same binary in
    DuckDB's directory layout (``v{version}/{platform}/httpfs.duckdb_extension``).
    """
    import importlib.util

    import duckdb

    spec = importlib.util.find_spec("duckdb_ext")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        directory = Path(location) / "extensions"
        if list(directory.glob(f"v{duckdb.__version__}/*/httpfs.duckdb_extension")):
            return directory
    missing_tool(
        f"no httpfs extension for DuckDB {duckdb.__version__} "
        "(the test extra installs duckdb-ext-httpfs of the same version)"
    )


async def test_duckdb_httpfs_reads_the_buckets_hive_layout(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """DuckDB's httpfs (its own S3 client, not our code, loaded from the local package with
    autoinstall off) globs the committed partition in the bucket with hive partitioning:
    the same rows as on disk, with venue, symbol and date as columns."""
    import duckdb

    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="duck"))
    directory, manifest = await _committed_in(bucket, tmp_path, "a")
    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "extension_directory": str(_httpfs_extension_directory()),
        }
    )
    con.execute("LOAD httpfs")
    endpoint = s3_server.endpoint.removeprefix("http://")
    con.execute(
        f"CREATE SECRET moto (TYPE s3, KEY_ID '{TEST_ACCESS_KEY}', SECRET '{aws_credentials}', "
        f"REGION 'us-east-1', ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)"
    )
    glob = f"s3://{bucket.config.bucket}/duck/cold/trade/*/*/*/*.parquet"
    rows = con.execute(
        "SELECT venue, symbol, CAST(date AS VARCHAR), count(*) "
        f"FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY ALL"
    ).fetchall()
    local = pq.read_table(directory).num_rows
    assert rows == [("kraken", "BTC-USD", DAY.date().isoformat(), local)]
    assert local == manifest.total_rows
