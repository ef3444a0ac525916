"""Multipart uploads from local files: parts sent from the page cache, checked by the store.

Against moto's server on loopback. A part of a local file (a sealed partition,
a spooled download) is hashed and sent straight from the file as a
:class:`FileRegion`, never read into a part buffer; its SHA-256 comes from the
same read as the manifest hash, and the send is fingerprinted too, so a file
that changes between that read and the send is never completed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

from cryptorun_daemon.storage.bucket_commit import LocalRange
from cryptorun_daemon.storage.file_region import PIECE, FileRegion
from cryptorun_daemon.storage.manifest import hash_bytes
from cryptorun_daemon.storage.multipart import MultipartUploader, PartChangedError, UploadReport
from cryptorun_daemon.storage.object_store import TierBucket
from tests.harness.s3 import S3Server, aws_credentials, s3_server
from tests.harness.s3_faults import S3FaultProxy

__all__ = ["aws_credentials", "s3_server"]  # pytest fixtures used by name

PART = 5 << 20  # S3's smallest part


async def _upload_file(
    bucket: TierBucket, root: Path, key: str, data: bytes, source: LocalRange
) -> UploadReport:
    """Upload ``data`` (the bytes of ``source``'s file) under ``key``, parts sent from the file."""
    return await MultipartUploader(bucket, root).upload(
        key, size=len(data), content_hash=hash_bytes(data), read=source, regions=source.region
    )


class _NoMemoryReads(LocalRange):
    """A local file whose parts may only be uploaded as regions (never read into memory)."""

    async def __call__(self, offset: int, length: int) -> bytes | bytearray:
        raise AssertionError(f"part at {offset} read into memory")


async def test_a_local_file_goes_up_in_parts_sent_from_the_file(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Three parts of a local file are uploaded from regions of it (no part read into
    memory) and the object is the file byte for byte."""
    data = os.urandom(2 * PART + 12345)
    path = tmp_path / "part-0000.parquet"
    path.write_bytes(data)
    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="fp", part_size=PART))
    source = _NoMemoryReads(path)

    report = await _upload_file(bucket, tmp_path, "big.bin", data, source)

    assert report.sent == len(data)
    body, _ = await bucket.get("big.bin")
    assert body == data


async def test_parts_from_a_file_are_sent_without_waiting_for_100_continue(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """botocore asks for ``Expect: 100-continue`` on every file-like body; the parts of
    a local file go up without it (no round trip, no extra response per part), as
    obstore sends its own PUTs, and the object is whole."""
    data = os.urandom(PART + 777)
    path = tmp_path / "part-0000.parquet"
    path.write_bytes(data)
    async with S3FaultProxy(s3_server.endpoint) as proxy:
        config = s3_server.tier_config("eu-central", prefix="fp-expect", part_size=PART)
        bucket = TierBucket("cold", replace(config, endpoint_url=proxy.endpoint))
        source = LocalRange(path)
        await _upload_file(bucket, tmp_path, "big.bin", data, source)
        body, _ = await bucket.get("big.bin")

    parts = [headers for method, url, headers in proxy.seen if "partNumber=" in url]
    assert len(parts) == 2
    assert all("x-amz-checksum-sha256" in headers for headers in parts)
    assert not any("expect" in headers for headers in parts)
    assert body == data


async def test_a_file_that_changes_between_hashing_and_sending_is_never_completed(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """The manifest hash and the part's checksum come from one read of the file, the send
    from another. If a byte changes in between, the uploader sees that the bytes sent are
    not the bytes hashed (whether or not the store checks the checksum: moto does not),
    fails the upload as corrupt and aborts it: nothing under the key, no upload left to
    resume, no state file."""
    data = os.urandom(2 * PART + 4096)
    path = tmp_path / "part-0000.parquet"
    path.write_bytes(data)
    config = s3_server.tier_config("eu-central", prefix="fp2", part_size=PART)
    bucket = TierBucket("cold", config)

    class ChangedAfterHashing(LocalRange):
        def region(self, offset: int, length: int) -> FileRegion:
            return _Tampered(self.path, offset, length)

    source = ChangedAfterHashing(path)
    with pytest.raises(PartChangedError):
        await _upload_file(bucket, tmp_path, "big.bin", data, source)
    assert await bucket.head("big.bin") is None
    client = bucket.botocore_client()
    listing = client.list_multipart_uploads(Bucket=config.bucket, Prefix=bucket.key(""))
    assert listing.get("Uploads", []) == []
    assert list((tmp_path / "_state/multipart/cold").glob("*.json")) == []


class _Tampered(FileRegion):
    """Serves the hashing pass the file's bytes, then flips one before the send reads it."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        super().__init__(path, offset, length)
        self._tampered = False

    def read(self, size: int | None = -1) -> bytes:
        if self.hashed is not None and not self._tampered:  # the send's first read
            self._tampered = True
            with self.path.open("r+b") as handle:
                handle.seek(self.offset + 10)
                byte = handle.read(1)
                handle.seek(self.offset + 10)
                handle.write(bytes([byte[0] ^ 0xFF]))
        return super().read(size)


def test_a_region_reads_its_range_in_pieces_and_rewinds(tmp_path: Path) -> None:
    data = os.urandom(3 * PIECE + 100)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    region = FileRegion(path, PIECE // 2, 2 * PIECE)
    try:
        assert len(region) == 2 * PIECE
        first = region.read(10 * PIECE)
        assert first == data[PIECE // 2 : PIECE // 2 + PIECE]  # at most one piece per read
        assert region.tell() == PIECE
        rest = region.read()
        assert rest == data[PIECE // 2 + PIECE : PIECE // 2 + 2 * PIECE]
        assert region.read(1) == b""
        region.seek(0)
        assert region.read(5) == data[PIECE // 2 : PIECE // 2 + 5]
        assert region.seek(0, 2) == 2 * PIECE
    finally:
        region.close()
    assert region.closed
    short = FileRegion(path, len(data) - 7, 100)  # the file ends first: reads short
    try:
        assert short.read(100) == data[-7:]
    finally:
        short.close()


class _Recorded(LocalRange):
    """A local file whose regions are kept, to check each one was closed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.opened: list[FileRegion] = []

    def region(self, offset: int, length: int) -> FileRegion:
        region = super().region(offset, length)
        self.opened.append(region)
        return region


async def test_every_region_is_closed_and_complete_names_each_parts_checksum(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path
) -> None:
    """Every region opened for an upload is closed once its part is done, and
    CompleteMultipartUpload names every part with the SHA-256 of its bytes: AWS S3
    requires that of an upload created with ChecksumAlgorithm=SHA256 (moto does not),
    and refuses a part whose stored bytes differ."""
    data = os.urandom(2 * PART + 1)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    bucket = TierBucket("cold", s3_server.tier_config("eu-central", prefix="fp3", part_size=PART))
    completed: list[dict[str, object]] = []
    client = bucket.botocore_client()
    client.meta.events.register(
        "provide-client-params.s3.CompleteMultipartUpload",
        lambda params, **_: completed.append(params),
    )
    source = _Recorded(path)
    await _upload_file(bucket, tmp_path, "o.bin", data, source)
    assert len(source.opened) == 3
    assert all(region.closed for region in source.opened)
    [params] = completed
    parts = params["MultipartUpload"]["Parts"]  # type: ignore[index]
    expected = [
        base64.b64encode(hashlib.sha256(data[n * PART : (n + 1) * PART]).digest()).decode()
        for n in range(3)
    ]
    assert [part["ChecksumSHA256"] for part in parts] == expected
    with pytest.raises(ValueError, match="closed region"):
        source.opened[0].read(1)  # a late read of a closed region never reads another file


async def test_a_failed_part_gives_every_permit_back_and_closes_every_region(
    s3_server: S3Server, aws_credentials: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first part's request fails while later parts are queued: the upload fails,
    and every part-buffer permit of the tier comes back and every region is closed, even
    for a part whose send task was cancelled before it ever ran (such a permit was lost
    for good, and after a few failures the tier's uploads waited forever)."""
    data = os.urandom(4 * PART)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    config = s3_server.tier_config("eu-central", prefix="fp4", part_size=PART, concurrency=8)
    bucket = TierBucket("cold", config)
    permits = bucket.part_buffers._value
    uploader = MultipartUploader(bucket, tmp_path)
    real_put = uploader._put_part

    async def failing_put(state: object, number: int, data: object, checksum: str) -> str:
        if number == 1:
            raise RuntimeError("part 1 refused")
        await asyncio.sleep(3600)  # the others are still in flight when part 1 fails
        return await real_put(state, number, data, checksum)  # type: ignore[arg-type]

    monkeypatch.setattr(uploader, "_put_part", failing_put)
    source = _Recorded(path)
    with pytest.raises(RuntimeError, match="part 1 refused"):
        await uploader.upload(
            "o.bin",
            size=len(data),
            content_hash=hash_bytes(data),
            read=source,
            regions=source.region,
        )
    assert bucket.part_buffers._value == permits
    assert source.opened
    assert all(region.closed for region in source.opened)
