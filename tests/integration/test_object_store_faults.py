"""Object-store faults through an HTTP fault proxy in front of the real test server.

500, 503 and SlowDown answers and stalled requests are retried with backoff,
counted in ``cryptorun_object_store_errors_total{op,code}``, and lose nothing:
the partition is committed whole, once.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from cryptorun_daemon.config import load_config
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.clock import SystemClock
from cryptorun_daemon.runtime.component import DaemonContext
from cryptorun_daemon.runtime.supervisor import Supervisor
from cryptorun_daemon.storage.bucket_commit import BucketCommitter, local_reader
from cryptorun_daemon.storage.bucket_sync import ObjectStoreComponent
from cryptorun_daemon.storage.layout import SUCCESS_MARKER, object_key
from cryptorun_daemon.storage.manifest import hash_bytes, read_manifest
from cryptorun_daemon.storage.multipart import MultipartUploader
from cryptorun_daemon.storage.object_store import ObjectStoreError, TierBucket
from tests.harness.daemons import RegionSpec
from tests.harness.net import free_port
from tests.harness.s3 import TEST_ACCESS_KEY, S3Server, aws_credentials, s3_server
from tests.harness.s3_faults import S3FaultProxy
from tests.harness.testdata import seed_partitions
from tests.harness.wait import eventually

__all__ = ["aws_credentials", "s3_server"]  # pytest fixtures used by name

DAY = datetime(2025, 9, 1, tzinfo=UTC)


def _errors(metrics: Metrics, op: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "cryptorun_object_store_errors_total", {"op": op, "code": code}
    )
    return 0.0 if value is None else value


async def test_5xx_and_slowdown_are_retried_counted_and_lose_nothing(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """PUTs answered 503 SlowDown twice and 500 InternalError once, and a GET answered 503
    ServiceUnavailable: the commit still completes with every object intact, each failed
    attempt counted under its S3 error code, and no log line holds a credential."""
    root = tmp_path / "eu"
    [directory] = seed_partitions(root, tier="cold", start=DAY, count=1, files=2)
    manifest = read_manifest(directory)
    metrics = Metrics()
    async with S3FaultProxy(s3_server.endpoint) as proxy:
        config = s3_server.tier_config("eu-central", prefix="faults", endpoint=proxy.endpoint)
        bucket = TierBucket("cold", config, metrics=metrics, retry_backoff=0.01)
        committer = BucketCommitter(bucket, root, metrics)
        token = await committer.fence.claim(1, "eu-central")
        proxy.fail("PUT", times=2, status=503, code="SlowDown")
        proxy.fail("PUT", times=1, status=500, code="InternalError")
        proxy.fail("GET", times=1, status=503, code="ServiceUnavailable")
        with structlog.testing.capture_logs() as logs:
            report = await committer.commit(manifest, local_reader(directory), token)
        assert report.committed
        assert proxy.injected[("PUT", "503")] == 2
        assert proxy.injected[("PUT", "500")] == 1
    assert _errors(metrics, "put", "SlowDown") == 2
    assert _errors(metrics, "put", "InternalError") == 1
    assert _errors(metrics, "get", "ServiceUnavailable") == 1
    direct = TierBucket("cold", s3_server.tier_config("eu-central", prefix="faults"))
    for entry in manifest.files:
        body, _ = await direct.get(object_key(manifest.key, entry.name))
        assert hash_bytes(body) == entry.hash
    assert await direct.head(object_key(manifest.key, SUCCESS_MARKER)) is not None
    retried = [line for line in logs if line["event"] == "object store request retried"]
    assert len(retried) == 4
    text = repr(logs)
    assert aws_credentials not in text
    assert TEST_ACCESS_KEY not in text


async def test_a_stalled_store_times_out_and_the_retry_completes(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """A request the store never answers (a stall longer than request_timeout) times out,
    is counted as code timeout and retried; the object is written once, intact."""
    metrics = Metrics()
    async with S3FaultProxy(s3_server.endpoint) as proxy:
        config = s3_server.tier_config(
            "eu-central", prefix="stall", endpoint=proxy.endpoint, request_timeout=1.0
        )
        bucket = TierBucket("cold", config, metrics=metrics, retry_backoff=0.01)
        proxy.stall("PUT", times=1, seconds=5.0)
        await bucket.put("obj.bin", b"payload")
        assert proxy.injected[("PUT", "stall")] == 1
    assert _errors(metrics, "put", "timeout") == 1
    direct = TierBucket("cold", s3_server.tier_config("eu-central", prefix="stall"))
    assert (await direct.get("obj.bin"))[0] == b"payload"


async def test_multipart_parts_survive_5xx_and_a_4xx_is_not_retried(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """UploadPart answered 503 SlowDown is retried (botocore path, same counting) and the
    object completes; an AccessDenied (403) is not retried and surfaces typed."""
    metrics = Metrics()
    data = os.urandom((5 << 20) + 100)

    async def read(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    async with S3FaultProxy(s3_server.endpoint) as proxy:
        config = s3_server.tier_config(
            "eu-central", prefix="mpfault", endpoint=proxy.endpoint, part_size=5 << 20
        )
        bucket = TierBucket("cold", config, metrics=metrics, retry_backoff=0.01)
        uploader = MultipartUploader(bucket, tmp_path)
        proxy.fail("PUT", times=1, status=503, code="SlowDown")
        await uploader.upload("big.bin", size=len(data), content_hash=hash_bytes(data), read=read)
        assert _errors(metrics, "multipart", "SlowDown") == 1
        proxy.fail("PUT", times=1, status=403, code="AccessDenied")
        with pytest.raises(ObjectStoreError) as info:
            await bucket.put("denied.bin", b"x")
        assert info.value.s3_code == "AccessDenied"
        assert not info.value.retryable
        assert _errors(metrics, "put", "AccessDenied") == 1
    direct = TierBucket("cold", s3_server.tier_config("eu-central", prefix="mpfault"))
    assert (await direct.get("big.bin"))[0] == data


@pytest.mark.parametrize("accept_weak_fencing", [False, True])
async def test_a_store_without_conditional_writes_is_refused_as_primary_unless_accepted(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path, accept_weak_fencing: bool
) -> None:
    """Behind a proxy that drops If-None-Match / If-Match (a store without conditional
    writes), the object_store worker of the tier's primary detects it, commits nothing and
    reports why (status, readiness) — unless accept_weak_fencing = true, when it commits."""
    async with S3FaultProxy(s3_server.endpoint) as proxy:
        proxy.strip_conditions = True
        prefix = f"weak-{accept_weak_fencing}"
        spec = RegionSpec(
            "eu-central",
            free_port(),
            tmp_path / "eu",
            peers={"us-east": free_port()},
            rules=[{"tier": "cold", "from": "eu-central", "to": ["us-east"], "lag_slo": "5m"}],
            sections={
                "storage.tiers.cold": {
                    "url": f"s3://{s3_server.bucket('eu-central')}/{prefix}",
                    "endpoint_url": proxy.endpoint,
                    "region": "us-east-1",
                    "allow_http": True,
                    "accept_weak_fencing": accept_weak_fencing,
                }
            },
        )
        config = load_config(spec.write())
        metrics = Metrics()
        supervisor = Supervisor(metrics)
        ctx = DaemonContext(
            config=config, metrics=metrics, clock=SystemClock(), supervisor=supervisor
        )
        component = ObjectStoreComponent(
            ctx,
            epoch_provider=lambda _tier: 1,
            primary_provider=lambda _tier: "eu-central",
            poll_interval=0.05,
        )
        [directory] = seed_partitions(config.storage.root, tier="cold", start=DAY, count=1)
        manifest = read_manifest(directory)
        direct = TierBucket("cold", s3_server.tier_config("eu-central", prefix=prefix))
        success = object_key(manifest.key, SUCCESS_MARKER)
        await component.start()
        try:
            if accept_weak_fencing:
                await eventually(lambda: _exists(direct, success), "the commit on the weak store")
                assert component.not_ready_reasons() == []
            else:
                await eventually(lambda: bool(component.not_ready_reasons()), "the refusal")
                backend = component.status(tier="cold", region=None)["tiers"]["cold"]["backend"]
                assert backend["conditional_writes"] is False
                assert "accept_weak_fencing" in backend["refused"]
                assert await direct.head(success) is None
        finally:
            await supervisor.stop(timeout=5.0)


async def _exists(bucket: TierBucket, relative: str) -> bool:
    return await bucket.head(relative) is not None
