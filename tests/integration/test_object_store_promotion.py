"""A promoted region that holds a tier only in its bucket is a source like any other.

Region A (eu-central) seals cold partitions and keeps them on disk and in its bucket on
one S3 endpoint; region B (us-east) mirrors them bucket → bucket into its own bucket on
another endpoint, with no local copy. After the failover that makes B primary, a third
region C (ap-south, cold on local disk) replicates from B: B's change feed, digests,
manifests and files come from its bucket.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from cryptorun_daemon.config import ObjectStoreTier
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, PartitionKey, object_key
from cryptorun_daemon.storage.object_store import TierBucket
from tests.harness.admin import post_failover, seal_when_accepted
from tests.harness.daemons import RegionSpec, run_daemon_process
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
        a_config = s3_server.tier_config(EU, prefix="pr")
        b_config = other.tier_config(US, prefix="pr")
        a.sections["storage.tiers.cold"] = _tier_section(a_config)
        b.sections["storage.tiers.cold"] = _tier_section(b_config)
        b.sections["storage.sources.eu-central.cold"] = _tier_section(a_config)
        b_bucket = TierBucket("cold", b_config)
        async with aiohttp.ClientSession() as http:
            async with run_daemon_process(b.write(), env=aws_env()) as db:
                async with run_daemon_process(a.write(), env=aws_env()):
                    for index, key in enumerate(keys):
                        write_trade_partition(a.storage_root, key, rows=20_000, seed=index + 1)
                        await seal_when_accepted(http, a.base_url, "cold", key.relpath)

                    async def in_b_bucket() -> bool:
                        heads = [
                            await b_bucket.head(object_key(key, SUCCESS_MARKER)) for key in keys
                        ]
                        return all(head is not None for head in heads)

                    await eventually(in_b_bucket, "both partitions in B's bucket", timeout=90)
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
                            (key.directory(c.storage_root) / SUCCESS_MARKER).is_file()
                            for key in keys
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
