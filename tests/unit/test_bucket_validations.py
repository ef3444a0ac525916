"""How many partitions a replica validates at once, per path.

The disk copier validates ``replication.max_validations`` partitions at a time
(2 by default: validation, not the transfer, bounds a local copy). A replica
whose tier and source live in buckets on different endpoints validates
``replication.max_bucket_validations`` (1 by default) and spools
``replication.bucket_spool_partitions`` (2): one validation thread keeps up
with a bucket transfer, and each one in flight holds a decoded file
(docs/BENCHMARKS.md, object store, fifth round).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptorun_daemon.config import load_config
from cryptorun_daemon.errors import ConfigError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.bucket_executor import BucketMirrorExecutor
from cryptorun_daemon.replication.component import WarmColdComponent
from cryptorun_daemon.runtime.clock import SystemClock
from cryptorun_daemon.runtime.component import DaemonContext
from cryptorun_daemon.runtime.supervisor import Supervisor
from cryptorun_daemon.storage.bucket_source import BucketFileSource
from tests.harness.daemons import RegionSpec
from tests.harness.s3 import aws_credentials

__all__ = ["aws_credentials"]  # pytest fixture used by name


def _component(tmp_path: Path, replication: dict[str, object]) -> WarmColdComponent:
    def tier(endpoint: str) -> dict[str, object]:
        return {
            "url": "s3://bucket/cold",
            "endpoint_url": endpoint,
            "region": "us-east-1",
            "allow_http": True,
        }

    spec = RegionSpec(
        "us-east",
        18080,
        tmp_path / "us",
        peers={"eu-central": 18081},
        rules=[{"tier": "cold", "from": "eu-central", "to": ["us-east"], "lag_slo": "5m"}],
        sections={
            "storage.tiers.cold": tier("http://127.0.0.1:19001"),
            "storage.sources.eu-central.cold": tier("http://127.0.0.1:19002"),
            "replication": replication,
        },
    )
    config = load_config(spec.write())
    metrics = Metrics()
    ctx = DaemonContext(
        config=config, metrics=metrics, clock=SystemClock(), supervisor=Supervisor(metrics)
    )
    return WarmColdComponent(ctx, validators=[lambda path, dataset, tier: None])


@pytest.mark.parametrize(
    ("replication", "bucket", "spool", "disk"),
    [
        ({}, 1, 2, 2),
        (
            {"max_bucket_validations": 3, "bucket_spool_partitions": 5, "max_validations": 4},
            3,
            5,
            4,
        ),
    ],
)
def test_a_bucket_to_bucket_replica_validates_max_bucket_validations_partitions_at_once(
    tmp_path: Path,
    aws_credentials: str,
    replication: dict[str, object],
    bucket: int,
    spool: int,
    disk: int,
) -> None:
    """The bucket → bucket executor's verifier takes ``max_bucket_validations`` (default 1)
    and its spool ``bucket_spool_partitions`` (default 2), the disk executor's verifier
    ``max_validations`` (default 2), from the same config."""
    component = _component(tmp_path, replication)
    mirror = component._bucket_mirror("cold", "eu-central")
    assert isinstance(mirror, BucketMirrorExecutor)
    assert mirror.verifier.max_validations == bucket
    assert mirror.spool_partitions == spool
    source = mirror.source
    assert isinstance(source, BucketFileSource)
    assert component._executor(source).verifier.max_validations == disk


def test_bucket_validations_or_spool_partitions_below_one_are_refused(tmp_path: Path) -> None:
    """Zero partitions judged or spooled at once would never commit anything: a config error
    naming each key."""
    spec = RegionSpec(
        "us-east",
        18080,
        tmp_path / "us",
        sections={"replication": {"max_bucket_validations": 0, "bucket_spool_partitions": 0}},
    )
    with pytest.raises(ConfigError) as info:
        load_config(spec.write())
    assert sorted(p.key for p in info.value.problems) == [
        "replication.bucket_spool_partitions",
        "replication.max_bucket_validations",
    ]
