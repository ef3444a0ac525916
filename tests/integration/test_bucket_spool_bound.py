"""A bucket → bucket replica spools a step's partitions a few at a time.

Against moto's server on loopback. With validators, every file is downloaded
into the spool, judged, then uploaded. A step's partitions all start at once
(``WarmColdExecutor.run_step``); unbounded, every partition downloaded at the
same time and none was judged or uploaded until most had arrived (the 434 MB
bench with every partition started at once: 0.56–0.60x of the plain loop and
208–217 MB peak, docs/BENCHMARKS.md). At most ``bucket_spool_partitions``
partitions are now downloading or being judged at once, every one still
commits, and a peer bucket's streams hold its transfer slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import UTC, datetime
from pathlib import Path

from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.bucket_executor import BucketMirrorExecutor
from cryptorun_daemon.replication.download import ByteCounter
from cryptorun_daemon.storage.bucket_source import BucketFileSource
from cryptorun_daemon.storage.change_feed import bucket_index
from cryptorun_daemon.storage.layout import SUCCESS_MARKER, object_key
from cryptorun_daemon.storage.manifest import FileEntry, Manifest, read_manifest
from cryptorun_daemon.storage.object_store import TierBucket
from tests.harness.s3 import S3Server, aws_credentials, s3_server
from tests.harness.testdata import seed_partitions

__all__ = ["aws_credentials", "s3_server"]  # pytest fixtures used by name

PARTITIONS = 6


async def _seed_source(
    bucket: TierBucket, root: Path, *, count: int = PARTITIONS
) -> list[Manifest]:
    """``count`` sealed cold partitions of two files each, put into ``bucket``."""
    manifests = []
    for directory in seed_partitions(
        root, tier="cold", start=datetime(2025, 3, 1, tzinfo=UTC), count=count, files=2
    ):
        manifest = read_manifest(directory)
        for entry in manifest.files:
            await bucket.put(
                object_key(manifest.key, entry.name), (directory / entry.name).read_bytes()
            )
        manifests.append(manifest)
    return manifests


async def test_a_step_spools_at_most_one_partition_more_than_it_judges_at_once(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Six partitions replicated at once with one validation slot: never more than two are
    downloading or waiting for their verdict at the same time (one judged, one arriving),
    and all six are committed in the target bucket."""
    source = TierBucket("cold", s3_server.tier_config("eu-central", prefix="spool-src"))
    target = TierBucket("cold", s3_server.tier_config("us-east", prefix="spool-dst"))
    manifests = await _seed_source(source, tmp_path / "source")

    lock = threading.Lock()
    spooling: set[str] = set()  # partitions between their first download and their verdict
    judged: dict[str, int] = {}
    peak = 0
    second = threading.Event()  # a second partition is spooling

    def validator(path: Path, dataset: str, tier: str) -> None:
        # The first verdict waits for a second partition to arrive: the peak is then
        # exactly the bound, whatever the machine's speed.
        second.wait(timeout=30)
        partition = str(path.parent.relative_to(root / "_state"))
        with lock:
            judged[partition] = judged.get(partition, 0) + 1
            if judged[partition] == 2:  # both files judged: the partition leaves the spool
                spooling.discard(partition)

    root = tmp_path / "replica"
    executor = BucketMirrorExecutor(
        root=root,
        region="us-east",
        source=BucketFileSource("eu-central", source),
        target=target,
        metrics=Metrics(),
        epoch_provider=lambda _tier: 1,
        primary_provider=lambda _tier: "eu-central",
        index=bucket_index(root, "cold"),
        validators=[validator],
        max_validations=1,
        spool_partitions=2,
    )
    fetch = executor.downloader.fetch_file

    async def counted(
        manifest: Manifest, directory: Path, entry: FileEntry, counter: ByteCounter
    ) -> None:
        nonlocal peak
        with lock:
            spooling.add(str(directory.relative_to(root / "_state")))
            peak = max(peak, len(spooling))
            if len(spooling) >= 2:
                second.set()
        await fetch(manifest, directory, entry, counter)

    executor.downloader.fetch_file = counted  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(executor.replicate_partition(m) for m in manifests))
    finally:
        executor.close()

    assert peak == 2
    assert len(judged) == PARTITIONS
    for manifest in manifests:
        assert await target.head(object_key(manifest.key, SUCCESS_MARKER)) is not None


async def test_a_peer_buckets_open_streams_hold_its_transfer_slots(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Reading a peer's bucket takes one of that bucket's ``concurrency`` transfer slots per
    open file, like every transfer of a tier: with two slots, two open streams leave none,
    and closing one gives it back."""
    bucket = TierBucket(
        "cold", s3_server.tier_config("eu-central", prefix="spool-slots", concurrency=2)
    )
    [manifest] = await _seed_source(bucket, tmp_path / "source", count=1)
    source = BucketFileSource("eu-central", bucket)

    def open_file(name: str) -> contextlib.AbstractAsyncContextManager[object]:
        entry = next(e for e in manifest.files if e.name == name)
        return source.open_file(
            "cold", manifest.partition, name, offset=0, expected_hash=entry.hash
        )

    first, second = (entry.name for entry in manifest.files)
    async with open_file(first):
        assert not bucket.slots.locked()
        async with open_file(second):
            assert bucket.slots.locked()
        assert not bucket.slots.locked()
