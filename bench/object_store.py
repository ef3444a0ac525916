"""Object-store benchmark: the daemon's bucket → bucket replication vs a plain obstore loop.

In one run, against local S3 servers (moto's server, two processes on
loopback: region A's store and region B's store):

1. seed ``--size-mb`` MB of partitions into A's bucket (``--file-mb`` per
   file, two files per cold partition, real manifests; random bytes, or valid
   trade Parquet with ``--data parquet``), manifests built once, before any timing;
2. **baseline**: a plain ``obstore`` loop — ``get`` each object whole, ``put``
   it into B's bucket — with ``--concurrency`` objects in flight;
3. **daemon** (the path the daemon runs): ``BucketMirrorExecutor.replicate_partition(manifest)``
   for every partition into B's bucket — the step a replica's pull link runs
   when its tier and its source's live in buckets on different endpoints
   (replication/bucket_executor.py): disk fence policy, bucket fence claim,
   ranged GETs, every byte hashed (xxh3-128) and
   compared with the manifest before the upload completes, resumable multipart
   uploads (their state saved once per upload), fenced markers, the bucket index entry;
   **validated** (``--data parquet``): the same with the daemon's step
   validators, as a replica runs it (files spooled under the state directory,
   judged, then uploaded from the spool: replication/bucket_executor.py);
4. **commit**: ``BucketCommitter.commit(manifest, bucket_reader(A), token)``
   alone — the daemon variant without the executor around it;
5. **server-side** (same endpoint): the same commit with
   ``copy_source`` — CopyObject, then every byte read back and hashed.

Each variant runs in its own child process (so its peak RSS is its own) with
the same concurrency, on the same objects, in the same run, and times its
transfer alone (set-up — stores, clients, the fence claim, the executor — is a
daemon's start-up, not its replication); the report prints
MB/s, the ratio to the baseline, peak RSS, the RSS of the imports alone
and the load average at the time.

Both variants send every object with the same request shape (one PUT below
the multipart threshold, else parts of the same size); each round starts with
another variant; what a variant wrote is deleted before the next one runs
(moto keeps objects in memory).

Usage: ``python bench/object_store.py [--size-mb 450] [--file-mb 15] [--concurrency 8]
[--rounds 2] [--multipart-mb N] [--part-mb N] [--partitions N] [--phases daemon,commit]
[--profile DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptorun_daemon.config import ObjectStoreTier  # noqa: E402
from cryptorun_daemon.config.model import ValidationConfig  # noqa: E402
from cryptorun_daemon.data.validate.batch import partition_validator  # noqa: E402
from cryptorun_daemon.metrics import Metrics  # noqa: E402
from cryptorun_daemon.replication.bucket_executor import (  # noqa: E402
    BucketMirrorExecutor,
    bucket_index,
)
from cryptorun_daemon.runtime import event_loop  # noqa: E402
from cryptorun_daemon.storage.bucket_commit import BucketCommitter, bucket_reader  # noqa: E402
from cryptorun_daemon.storage.bucket_source import BucketFileSource  # noqa: E402
from cryptorun_daemon.storage.layout import PartitionKey, object_key  # noqa: E402
from cryptorun_daemon.storage.manifest import FileEntry, Manifest, hash_bytes  # noqa: E402
from cryptorun_daemon.storage.object_store import TierBucket  # noqa: E402

#: baseline: plain obstore get+put; daemon: the replica's BucketMirrorExecutor;
#: commit: BucketCommitter.commit alone (the daemon variant minus the executor);
#: server-side: same endpoint, CopyObject + read-back.
#: validated: the daemon variant with the step validators (needs ``--data parquet``).
PHASES = ("baseline", "daemon", "validated", "commit", "server-side")


def tier(endpoint: str, bucket: str, prefix: str, concurrency: int) -> ObjectStoreTier:
    return ObjectStoreTier(
        url=f"s3://{bucket}/{prefix}",
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region="us-east-1",
        allow_http=True,
        concurrency=concurrency,
        request_timeout=120.0,
    )


def upload_shape(args: argparse.Namespace) -> tuple[int, int]:
    """``(multipart_threshold, part_size)`` in bytes, the daemon's config and the baseline's.

    Both variants send every object with the same request shape: one PUT below
    the threshold, else a multipart upload in parts of ``part_size`` (obstore's
    own default would be 5 MiB parts from 5 MiB on, the daemon's 8 MiB from 8 MiB).
    """
    default = ObjectStoreTier(url="s3://x/y", bucket="x", prefix="y")
    threshold = (
        args.multipart_mb << 20 if args.multipart_mb is not None else default.multipart_threshold
    )
    part = args.part_mb << 20 if args.part_mb is not None else default.part_size
    return threshold, part


def partition_keys(size_mb: int, file_mb: int) -> list[tuple[PartitionKey, list[int]]]:
    """Cold partitions of two files each, and the seed of each file's bytes."""
    count = max(1, size_mb // file_mb)
    return [
        (
            PartitionKey(
                day=date(2025, 1, 1) + timedelta(days=p // 2),
                hour=None,
                tier="cold",
                dataset="trade",
                venue="bench",
                symbol="BTC-USD",
            ),
            [p, p + 1][: count - p],
        )
        for p in range(0, count, 2)
    ]


def blob(seed: int, file_mb: int) -> bytes:
    """``file_mb`` MiB of incompressible bytes, reproducible from ``seed`` (not kept)."""
    rng = random.Random(seed)
    block = rng.randbytes(1 << 20)
    return block * file_mb


def parquet_blob(key: PartitionKey, seed: int, file_mb: int) -> bytes:
    """A valid trade Parquet file of about ``file_mb`` MiB (uncompressed) for ``key``."""
    import io

    import pyarrow.parquet as pq

    from tests.harness.testdata import partition_trades

    rows = (file_mb << 20) // 56  # about 56 bytes per uncompressed trade row
    out = io.BytesIO()
    pq.write_table(
        partition_trades(key, rows, origin="eu-central", seed=seed + 1),
        out,
        compression="none",
    )
    return out.getvalue()


async def seed_source(source: TierBucket, args: argparse.Namespace) -> list[Manifest]:
    """Put every file into A's bucket; return the partitions' manifests (built here once)."""
    import obstore

    out = []
    for key, seeds in partition_keys(args.size_mb, args.file_mb):
        files = []
        for index, s in enumerate(seeds):
            name = f"part-{index:04d}.parquet"
            data = (
                parquet_blob(key, s, args.file_mb)
                if args.data == "parquet"
                else blob(s, args.file_mb)
            )
            await obstore.put_async(source.store, source.key(object_key(key, name)), data)
            files.append(FileEntry(name, len(data), hash_bytes(data)))
        out.append(
            Manifest(
                tier="cold",
                partition=key.relpath,
                files=tuple(files),
                schema_fingerprint=None,
                writer_region="eu-central",
                epoch=1,
                sealed_at=datetime(2025, 6, 1, tzinfo=UTC),
            )
        )
    return out


def load_manifests(path: str) -> list[Manifest]:
    return [Manifest.from_bytes(raw.encode()) for raw in json.loads(Path(path).read_text())]


# --- the variants (each in a child process) -------------------------------------------


async def run_baseline(args: argparse.Namespace, parts: list[Manifest]) -> tuple[int, float]:
    """``(bytes moved, seconds)`` of the transfer alone (set-up is not timed, see ``child``)."""
    import obstore

    src = TierBucket("cold", tier(args.a, "bench-a", "src", args.concurrency))
    dst = TierBucket("cold", tier(args.b, "bench-b", f"baseline-{args.round}", args.concurrency))
    keys = [object_key(m.key, f.name) for m in parts for f in m.files]
    slots = asyncio.Semaphore(args.concurrency)
    moved = 0

    threshold, part = upload_shape(args)

    async def one(key: str) -> None:
        nonlocal moved
        async with slots:
            result = await obstore.get_async(src.store, src.key(key))
            data = await result.bytes_async()
            await obstore.put_async(
                dst.store,
                dst.key(key),
                data,
                use_multipart=len(data) >= threshold,
                chunk_size=part,
            )
            moved += len(data)

    # As the daemon variants' fence claim does before their timer: one small PUT, so
    # the destination's first connection is not timed in one variant only.
    await obstore.put_async(dst.store, dst.key("_state/warm-up"), b"{}")
    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in keys))
    return moved, time.perf_counter() - started


async def run_daemon(
    args: argparse.Namespace,
    parts: list[Manifest],
    *,
    server_side: bool,
    executor: bool,
    validated: bool = False,
) -> tuple[int, float]:
    """``(bytes moved, seconds)`` of the replication alone (set-up is not timed, see ``child``)."""
    metrics = Metrics()
    src = TierBucket("cold", tier(args.a, "bench-a", "src", args.concurrency))
    endpoint = args.a if server_side else args.b
    bucket = "bench-a2" if server_side else "bench-b"
    config = tier(endpoint, bucket, f"{args.phase}-{args.round}", args.concurrency)
    threshold, part = upload_shape(args)
    config = replace(config, multipart_threshold=threshold, part_size=part)
    dst = TierBucket("cold", config, metrics=metrics)
    committer = BucketCommitter(dst, Path(args.state), metrics)
    token = await committer.fence.claim(1, "eu-central")
    # The executor a replica's pull link runs when its tier and its source's live in
    # buckets on different endpoints (replication/bucket_executor.py).
    mirror = BucketMirrorExecutor(
        root=Path(args.state),
        region="us-east",
        source=BucketFileSource("eu-central", src),
        target=dst,
        metrics=metrics,
        epoch_provider=lambda _tier: 1,
        primary_provider=lambda _tier: "eu-central",
        index=bucket_index(Path(args.state), "cold"),
        # Validation and spool bounds: the executor's defaults, the config's.
        # "validated": the daemon's step validators, as a replica runs them
        # (the files spooled and judged before they go up).
        validators=[
            partition_validator(
                region="us-east",
                config=ValidationConfig(),
                metrics=metrics,
                storage_root=Path(args.state),
            )
        ]
        if validated
        else (),
    )
    # Two files per partition: concurrency/2 partitions at once keep as many objects in
    # flight as the baseline; --partitions 0 starts them all, as a replica's step does,
    # bounded by the executor's own slots (source, target, spool, validations).
    at_once = args.partitions if args.partitions is not None else max(1, args.concurrency // 2)
    slots = asyncio.Semaphore(at_once or len(parts))
    moved = 0

    async def one(manifest: Manifest) -> None:
        nonlocal moved
        async with slots:
            if server_side:
                await committer.commit(manifest, bucket_reader(src), token, copy_source=src)
            elif executor:
                await mirror.replicate_partition(manifest)
            else:
                await committer.commit(manifest, bucket_reader(src), token)
            moved += manifest.total_bytes

    # A running daemon built its botocore client (for the multipart calls) with its
    # first upload, long before; built here lazily it would be timed (~0.13 s).
    dst.botocore_client()
    started = time.perf_counter()
    await asyncio.gather(*(one(m) for m in parts))
    return moved, time.perf_counter() - started


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``), in MiB.

    Not ``getrusage().ru_maxrss``: Linux carries that across ``exec``, so a
    child would report the parent's size at the fork (the parent holds the
    seeded data) whenever that is larger than the child's own peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def child(args: argparse.Namespace) -> None:
    parts = load_manifests(args.manifests)
    # What the imports alone cost (the daemon variant pulls in the replication stack).
    import_mb = peak_rss_mb()
    # Every variant runs the way the daemon runs (runtime/event_loop.run: its loop,
    # collector and allocator settings), the plain loop included, and times its
    # transfer alone: building stores and clients, claiming the fence and building
    # the executor are a daemon's start-up, done once, not its replication.
    if args.phase == "baseline":
        moved, seconds = event_loop.run(run_baseline(args, parts))
    else:
        moved, seconds = event_loop.run(
            run_daemon(
                args,
                parts,
                server_side=args.phase == "server-side",
                executor=args.phase in ("daemon", "validated"),
                validated=args.phase == "validated",
            )
        )
    rss_mb = peak_rss_mb()
    print(
        json.dumps(
            {
                "phase": args.phase,
                "bytes": moved,
                "seconds": seconds,
                "rss_mb": rss_mb,
                "import_mb": import_mb,
            }
        )
    )


def run_child(
    phase: str, args: argparse.Namespace, a: str, b: str, state: str, round_: int
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--round",
        str(round_),
        "--phase",
        phase,
        "--a",
        a,
        "--b",
        b,
        "--state",
        state,
        "--manifests",
        args.manifests,
        "--size-mb",
        str(args.size_mb),
        "--file-mb",
        str(args.file_mb),
        "--concurrency",
        str(args.concurrency),
        *(["--multipart-mb", str(args.multipart_mb)] if args.multipart_mb is not None else []),
        *(["--part-mb", str(args.part_mb)] if args.part_mb is not None else []),
        *(["--partitions", str(args.partitions)] if args.partitions is not None else []),
    ]
    if args.profile:
        # py-spy's collapsed stacks of the child alone (its own process, not the servers).
        out = Path(args.profile) / f"{phase}-{round_}.txt"
        beside = Path(sys.executable).parent / "py-spy"
        command = [
            str(beside) if beside.exists() else "py-spy",
            "record",
            "--format",
            "raw",
            "-r",
            "50",
            "-o",
            str(out),
            "--",
            *command,
        ]
    load = os.getloadavg()[0]
    from tests.harness.s3 import aws_env

    done = subprocess.run(command, capture_output=True, text=True, env=aws_env(), check=False)
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1])
    result["load"] = load
    return result


def empty_destinations(server: Any, bucket: str) -> None:
    """Delete what a variant wrote: moto keeps objects in memory, and a store swollen by
    the earlier variants' 450 MB each would tax the later ones."""
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=450)
    parser.add_argument(
        "--multipart-mb",
        type=int,
        default=None,
        help="the daemon's multipart_threshold in MiB (default: the config default, 8)",
    )
    parser.add_argument(
        "--part-mb",
        type=int,
        default=None,
        help="part size in MiB of both variants' multipart uploads (default: the config's, 8)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="comma-separated variants to run (the baseline always runs)",
    )
    parser.add_argument("--profile", default=None, help="directory for py-spy raw profiles")
    parser.add_argument("--file-mb", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions the daemon variants replicate at once (default: concurrency/2; "
        "0: all at once, as a replica's step runs them)",
    )
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--a")
    parser.add_argument("--b")
    parser.add_argument("--state")
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--manifests")
    parser.add_argument(
        "--data",
        choices=("random", "parquet"),
        default="random",
        help="file contents: random bytes, or valid trade Parquet (needed by 'validated')",
    )
    args = parser.parse_args()
    if args.phase:
        child(args)
        return
    # The test harness (and pytest with it) only in the parent: a child's RSS is the
    # daemon's modules and its transfer, not the bench's tooling.
    from tests.harness.s3 import aws_env, running_s3_server

    os.environ.update(aws_env())
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_s3_server(Path(tmp)) as a,
        running_s3_server(Path(tmp)) as b,
    ):
        for server, names in ((a, ("bench-a", "bench-a2")), (b, ("bench-b",))):
            for name in names:
                server.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        src = TierBucket("cold", tier(a.endpoint, "bench-a", "src", args.concurrency))
        parts = asyncio.run(seed_source(src, args))
        args.manifests = str(Path(tmp) / "manifests.json")
        Path(args.manifests).write_text(json.dumps([m.to_bytes().decode() for m in parts]))
        total = sum(m.total_bytes for m in parts)
        print(
            f"{total / 2**20:.0f} MB of {args.data} data in "
            f"{sum(len(m.files) for m in parts)} objects "
            f"({len(parts)} partitions), concurrency {args.concurrency}"
        )
        threshold, part = upload_shape(args)
        print(
            f"both variants: one PUT below {threshold >> 20} MiB, else multipart in "
            f"{part >> 20} MiB parts"
        )
        wanted = set(args.phases.split(",")) - ({"validated"} if args.data != "parquet" else set())
        chosen = [p for p in PHASES if p == "baseline" or p in wanted]
        rows = []
        for round_ in range(args.rounds):
            # Each round starts with another variant: none always runs first or last.
            order = chosen[round_ % len(chosen) :] + chosen[: round_ % len(chosen)]
            for phase in order:
                state = tempfile.mkdtemp(dir=tmp)
                rows.append(run_child(phase, args, a.endpoint, b.endpoint, state, round_))
                empty_destinations(b, "bench-b")
                empty_destinations(a, "bench-a2")
        base = [r for r in rows if r["phase"] == "baseline"]
        base_rate = sum(r["bytes"] / r["seconds"] for r in base) / len(base)
        print(
            f"{'variant':<12} {'MB/s':>8} {'ratio':>6} {'RSS MB':>7} {'imports MB':>10} {'load':>5}"
        )
        for r in rows:
            rate = r["bytes"] / r["seconds"]
            print(
                f"{r['phase']:<12} {rate / 2**20:8.1f} {rate / base_rate:6.2f} "
                f"{r['rss_mb']:7.0f} {r['import_mb']:10.0f} {r['load']:5.1f}"
            )


if __name__ == "__main__":
    main()
