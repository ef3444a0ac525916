"""Executor and partition server over a real loopback HTTP server (no mocks).

The source side is the real ``PartitionServer`` in an aiohttp app with the
admin error middleware; the destination pulls with the real ``HttpPeer``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from yarl import URL

from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.executor import WarmColdExecutor
from cryptorun_daemon.replication.transport_http import HttpPeer
from cryptorun_daemon.storage.manifest import HashCache, Manifest, hash_file
from cryptorun_daemon.storage.seal import is_sealed, seal_partition
from tests.harness.partitions import serving_partitions
from tests.harness.testdata import seed_partitions, write_trade_partition

T0 = datetime(2025, 9, 1, tzinfo=UTC)


@dataclass
class Pair:
    src_root: Path
    dst_root: Path
    peer: HttpPeer
    metrics: Metrics
    session: aiohttp.ClientSession
    base_url: str

    def executor(self, **kwargs: object) -> WarmColdExecutor:
        args: dict[str, object] = {
            "root": self.dst_root,
            "region": "us-east",
            "source": self.peer,
            "metrics": self.metrics,
            "retry_backoff": 0.0,
            "hash_cache": HashCache(),
        }
        args.update(kwargs)
        return WarmColdExecutor(**args)  # type: ignore[arg-type]

    def transferred(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "cryptorun_replication_bytes_total",
            {"tier": "warm", "from": "eu-central", "to": "us-east"},
        )
        return value or 0.0

    async def manifests(self) -> list[Manifest]:
        return list((await self.peer.list_partitions("warm")).manifests)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    seed_partitions(src, start=T0, count=2, rows=20_000, files=2)
    async with (
        serving_partitions(src, "eu-central") as base_url,
        aiohttp.ClientSession() as session,
    ):
        peer = HttpPeer(session, "eu-central", base_url, headers={}, request_timeout=10)
        yield Pair(src, dst, peer, Metrics(CollectorRegistry()), session, base_url)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "warm").rglob("*"))
        if p.is_file()
    }


async def test_copy_is_identical_and_rerun_moves_zero_bytes(pair: Pair) -> None:
    """Files and manifests end byte-identical; replicating again transfers nothing."""
    executor = pair.executor()
    manifests = await pair.manifests()
    total = sum(m.total_bytes for m in manifests)
    for manifest in manifests:
        await executor.replicate_partition(manifest)
    assert _tree(pair.dst_root) == _tree(pair.src_root)
    assert pair.transferred() == total
    for manifest in manifests:
        assert await executor.replicate_partition(manifest) == 0
    assert pair.transferred() == total


async def test_resume_from_partial_pulls_only_the_rest(pair: Pair) -> None:
    """A kept partial prefix is re-hashed and only the remaining bytes are requested."""
    manifest = (await pair.manifests())[0]
    entry = manifest.files[0]
    source_bytes = (pair.src_root / "warm" / manifest.partition / entry.name).read_bytes()
    directory = pair.dst_root / "warm" / manifest.partition
    directory.mkdir(parents=True)
    kept = len(source_bytes) // 3
    (directory / f".{entry.name}.partial").write_bytes(source_bytes[:kept])
    pulled = await pair.executor().replicate_partition(manifest)
    assert pulled == manifest.total_bytes - kept
    assert (directory / entry.name).read_bytes() == source_bytes
    assert is_sealed(directory)


async def test_bad_prefix_in_partial_is_retried_from_scratch(pair: Pair) -> None:
    """A partial whose prefix is garbage fails the hash once, then a clean retry succeeds."""
    manifest = (await pair.manifests())[0]
    entry = manifest.files[0]
    directory = pair.dst_root / "warm" / manifest.partition
    directory.mkdir(parents=True)
    (directory / f".{entry.name}.partial").write_bytes(b"\x00" * 1000)
    await pair.executor().replicate_partition(manifest)
    assert hash_file(directory / entry.name) == entry.hash
    assert is_sealed(directory)


async def test_corrupt_source_fails_step_and_quarantines(pair: Pair) -> None:
    """A byte flipped at the source after sealing: reason corrupt, nothing committed."""
    manifests = await pair.manifests()
    manifest = manifests[0]
    victim = pair.src_root / "warm" / manifest.partition / manifest.files[1].name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    from cryptorun_daemon.replication.planner import listed, plan_replication
    from cryptorun_daemon.replication.rules import TimeRange

    plan = plan_replication(
        tier="warm",
        from_region="eu-central",
        to_region="us-east",
        window=TimeRange(T0, datetime.now(UTC)),
        source=listed([manifest]),
        destination={},
        now=datetime.now(UTC),
    )
    [step] = plan.steps
    outcome = await pair.executor(retry_attempts=2).run_step(step, {manifest.partition: manifest})
    assert not outcome.ok
    assert outcome.reason == "corrupt"
    directory = pair.dst_root / "warm" / manifest.partition
    assert not is_sealed(directory)
    assert not (directory / manifest.files[1].name).exists()
    # Both bad copies (one per attempt) are kept, each with its own error record.
    kept = pair.dst_root / "_quarantine" / "warm" / "us-east"
    quarantined = sorted(
        p
        for p in kept.rglob(f".{manifest.files[1].name}.partial*")
        if not p.name.endswith(".error.json")
    )
    assert len(quarantined) == 2
    assert all(p.read_bytes() == bytes(data) for p in quarantined)
    records = [json.loads(p.with_name(p.name + ".error.json").read_text()) for p in quarantined]
    assert sorted(r["errors"][0]["value"][-11:] for r in records) == ["(attempt 1)", "(attempt 2)"]
    sample = pair.metrics.registry.get_sample_value
    assert (
        sample(
            "cryptorun_replication_step_failures_total",
            {"tier": "warm", "from": "eu-central", "to": "us-east", "reason": "corrupt"},
        )
        == 1
    )
    assert sample("cryptorun_data_consistency_errors_total", {"check": "corrupt"}) == 2
    assert (
        sample("cryptorun_quarantine_total", {"tier": "warm", "region": "us-east", "kind": "file"})
        == 2
    )


async def test_superseded_version_is_moved_aside_not_overwritten(pair: Pair) -> None:
    """A different sealed copy at the destination moves to _superseded/ before the new one lands."""
    manifest = (await pair.manifests())[0]
    directory = write_trade_partition(pair.dst_root, manifest.key, rows=100, seed=99)
    old_bytes = (directory / "part-0000.parquet").read_bytes()
    seal_partition(directory, writer_region="us-east", epoch=1)
    (directory / "stray.bin").write_bytes(b"not in any manifest")
    await pair.executor().replicate_partition(manifest)
    assert hash_file(directory / "part-0000.parquet") == manifest.files[0].hash
    kept = list((pair.dst_root / "_superseded").rglob("part-0000.parquet"))
    assert [p.read_bytes() for p in kept] == [old_bytes]
    assert not (directory / "stray.bin").exists()
    assert len(list((pair.dst_root / "_superseded").rglob("stray.bin"))) == 1


async def test_validator_rejection_leaves_partition_uncommitted(pair: Pair) -> None:
    """A rejected file never seals its partition: strict stops at the first file, non-strict
    names every rejected file, and the same bytes are not fetched and validated again."""
    from cryptorun_daemon.errors import ReplicationError

    manifest = (await pair.manifests())[0]
    calls: list[str] = []

    def always_bad(path: Path, dataset: str, tier: str) -> bool:
        calls.append(path.name)
        return False

    with pytest.raises(ReplicationError) as caught:
        await pair.executor(validators=[always_bad], strict=True).replicate_partition(manifest)
    assert caught.value.reason == "validation"
    assert len(calls) == 1
    assert not is_sealed(pair.dst_root / "warm" / manifest.partition)

    calls.clear()
    relaxed = pair.executor(validators=[always_bad], strict=False)
    with pytest.raises(ReplicationError) as caught:
        await relaxed.replicate_partition(manifest)
    assert caught.value.reason == "validation"
    assert str(caught.value).startswith("not committed:")
    assert len(calls) == len(manifest.files)
    assert not is_sealed(pair.dst_root / "warm" / manifest.partition)
    with pytest.raises(ReplicationError, match="not committed"):
        await relaxed.replicate_partition(manifest)
    assert len(calls) == len(manifest.files)  # remembered: not validated a second time


async def test_listing_honours_the_window(pair: Pair) -> None:
    """GET /v1/partitions with start/end returns only partitions wholly inside."""
    from cryptorun_daemon.replication.rules import TimeRange

    listing = await pair.peer.list_partitions(
        "warm", TimeRange.parse("2025-09-01T00:00:00Z/2025-09-01T01:00:00Z")
    )
    assert [m.key.hour for m in listing.manifests] == [0]
    async with pair.session.get(
        f"{pair.base_url}/v1/partitions", params={"tier": "warm", "start": "2025-09-01T00:00:00"}
    ) as resp:
        assert resp.status == 400
        assert set(json.loads(await resp.text())) == {"error", "detail"}


@pytest.mark.parametrize(
    "raw_path",
    [
        "/v1/partitions/warm/../../../etc/passwd",
        "/v1/partitions/warm/trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00/..%2F..%2F..%2Fsecret",
        "/v1/partitions/warm/%2Fetc%2Fpasswd",
        "/v1/partitions/warm/trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00/_SUCCESS",
        "/v1/partitions/warm/trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00/nope.parquet",
        "/v1/partitions/lukewarm/x",
        "/v1/partitions/warm/trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00/%2e%2e/x",
    ],
)
async def test_hostile_paths_are_4xx(pair: Pair, raw_path: str) -> None:
    """Traversal, encoded separators, markers and unlisted files never return data."""
    (pair.src_root / "secret").write_text("top secret")
    url = URL(pair.base_url + raw_path, encoded=True)
    async with pair.session.get(url) as resp:
        body = await resp.read()
    assert 400 <= resp.status < 500
    assert b"top secret" not in body


async def test_range_and_content_etag(pair: Pair) -> None:
    """Files honour Range; ETag is the manifest hash; a stale If-Range gets the whole file."""
    manifest = (await pair.manifests())[0]
    entry = manifest.files[0]
    url = f"{pair.base_url}/v1/partitions/warm/{manifest.partition}/{entry.name}"
    async with pair.session.get(url, headers={"Range": "bytes=10-"}) as resp:
        assert resp.status == 206
        assert resp.headers["ETag"].strip('"') == entry.hash
        assert len(await resp.read()) == entry.bytes - 10
    async with pair.session.get(
        url, headers={"Range": "bytes=10-", "If-Range": '"xxh3_128:stale"'}
    ) as resp:
        assert resp.status == 200
        assert len(await resp.read()) == entry.bytes


async def test_validator_exceptions_fail_only_their_partition(pair: Pair) -> None:
    """A strict validator raising ValidationFailedError, or one that cannot read a dataset
    (ValueError), fails that partition with reason validation; the step still returns."""
    from cryptorun_daemon.errors import ReplicationError, ValidationFailedError

    manifest = (await pair.manifests())[0]

    def strict(path: Path, dataset: str, tier: str) -> bool:
        raise ValidationFailedError("schema: price must be > 0")

    def unknown(path: Path, dataset: str, tier: str) -> bool:
        raise ValueError(f"unknown dataset {dataset!r}")

    with pytest.raises(ReplicationError) as caught:
        await pair.executor(validators=[strict], strict=True).replicate_partition(manifest)
    assert caught.value.reason == "validation"
    assert "price must be > 0" in str(caught.value)
    with pytest.raises(ReplicationError) as caught:
        await pair.executor(validators=[unknown]).replicate_partition(manifest)
    assert caught.value.reason == "validation"
    assert "cannot check this file" in str(caught.value)
    assert not is_sealed(pair.dst_root / "warm" / manifest.partition)


async def test_a_version_that_only_adds_a_file_fetches_only_that_file(pair: Pair) -> None:
    """When the source re-seals a partition with one more file (a sub-hour window or a late
    fill), the replica keeps the files it has (same inode, not fetched again), pulls only
    the new one, and keeps the previous manifest under _superseded/ for as-of reads."""
    manifest = (await pair.manifests())[0]
    await pair.executor().replicate_partition(manifest)
    directory = manifest.key.directory(pair.dst_root)
    inodes = {e.name: (directory / e.name).stat().st_ino for e in manifest.files}
    before = pair.transferred()
    source_dir = manifest.key.directory(pair.src_root)
    added = source_dir / "part-0099.parquet"
    added.write_bytes((source_dir / manifest.files[0].name).read_bytes())
    (source_dir / "_SUCCESS").unlink()
    seal_partition(source_dir, writer_region="eu-central", epoch=1)
    grown = next(m for m in await pair.manifests() if m.key == manifest.key)
    assert len(grown.files) == len(manifest.files) + 1
    await pair.executor().replicate_partition(grown)
    assert is_sealed(directory)
    assert pair.transferred() - before == added.stat().st_size
    assert {e.name: (directory / e.name).stat().st_ino for e in manifest.files} == inodes
    kept = list((pair.dst_root / "_superseded").rglob("_manifest.json"))
    assert [json.loads(p.read_text())["content_hash"] for p in kept] == [manifest.content_hash]


async def test_many_small_write_batches_copy_every_byte_once(pair: Pair) -> None:
    """With a write batch far smaller than a file, every batch is hashed and written in order.

    Each batch of received chunks goes to the copier's disk threads as one
    ``writev`` while the next arrives; the files end byte-identical and every
    byte is counted exactly once.
    """
    executor = pair.executor(chunk_size=4096, io_threads=2)
    manifests = await pair.manifests()
    for manifest in manifests:
        await executor.replicate_partition(manifest)
    executor.close()
    assert _tree(pair.dst_root) == _tree(pair.src_root)
    assert pair.transferred() == sum(m.total_bytes for m in manifests)
