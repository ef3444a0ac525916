"""A byte range of a local file as a request body, read as it is sent.

A multipart part of a local file (a sealed partition on disk, a spooled
download) need not be held in memory to be uploaded. :func:`hash_region`
reads it once for the manifest hash and the part's ``x-amz-checksum-sha256``;
botocore then reads it once more while it sends it, and :class:`FileRegion`
serves both passes from the page cache in pieces of at most :data:`PIECE`
bytes. A tier's uploads from disk hold a few pieces instead of
``part_buffers × part_size`` bytes. Each pass is fingerprinted (xxh3-64), so
the uploader can prove the bytes sent are the bytes hashed
(:meth:`FileRegion.sent_as_hashed`) even on a store that ignores the checksum.

Pieces stay below the allocator's mmap threshold
(:mod:`cryptorun_daemon.runtime.allocator`), so they are reused from the heap
instead of mapped and faulted in each time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any, Final

import xxhash

__all__ = ["PIECE", "FileRegion", "hash_part", "hash_region"]

#: The most bytes one sized ``read`` returns (callers loop until ``b""``).
PIECE: Final = 256 << 10


class FileRegion(io.RawIOBase):
    """``length`` bytes of ``path`` from ``offset``: readable, seekable, sized.

    Positions are relative to the region. A file shorter than the region
    reads short (the uploader's hash check names it). Resource handling: one
    descriptor, closed by :meth:`close` or the context manager. A request
    abandoned by a cancelled task may still be reading in its worker thread
    when the region is closed: reads and the close take one lock, and a read
    after the close raises (the descriptor's number may already name another
    file), so such a request fails instead of sending another file's bytes.
    """

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._fd = -1  # before anything can fail: close() (and __del__) must find it
        self._lock = threading.Lock()
        super().__init__()
        self.path = path
        self.offset = offset
        self.length = length
        self._position = 0
        # xxh3-64 of what was read since the last rewind: what one pass saw.
        self._pass = xxhash.xxh3_64()
        #: The pass digest of the read that was hashed for the manifest (hash_region).
        self.hashed: int | None = None
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.length}[whence]
        self._position = min(max(0, base + offset), self.length)
        if self._position == 0:
            self._pass = xxhash.xxh3_64()
        return self._position

    def pass_digest(self) -> int:
        """xxh3-64 of the bytes read since the last rewind to the region's start."""
        return self._pass.intdigest()

    def sent_as_hashed(self) -> bool:
        """Whether the last pass read the whole region and saw the bytes that were hashed.

        Called after a send: the bytes on the wire are the ones the manifest
        hash and the part's checksum were computed from, whatever the store
        checks (moto, for one, does not check ``x-amz-checksum-sha256``).
        """
        return self._position == self.length and self._pass.intdigest() == self.hashed

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (at most :data:`PIECE`), or the rest with ``size < 0``."""
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"{self.path}: read of a closed region")
            remaining = self.length - self._position
            want = remaining if size is None or size < 0 else min(size, remaining, PIECE)
            data = os.pread(self._fd, want, self.offset + self._position)
            self._position += len(data)
            self._pass.update(data)
            return data

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


def hash_region(region: FileRegion, hasher: Any) -> tuple[int, str]:
    """Feed the region's bytes to ``hasher`` in order; ``(size, base64 SHA-256 of them)``.

    The SHA-256 goes with the part as ``x-amz-checksum-sha256`` (a store that
    checks it refuses bytes other than these); the pass is also remembered
    (``region.hashed``), so the uploader can tell whether the send read the
    same bytes (:meth:`FileRegion.sent_as_hashed`) on any store.
    """
    region.seek(0)
    size = 0
    sha = hashlib.sha256()
    while piece := region.read(PIECE):
        hasher.update(piece)
        sha.update(piece)
        size += len(piece)
    region.hashed = region.pass_digest()
    region.seek(0)
    return size, _base64_digest(sha)


def hash_part(data: bytes | bytearray, hasher: Any) -> str:
    """Feed an in-memory part to ``hasher``; the base64 SHA-256 of it (see :func:`hash_region`)."""
    hasher.update(data)
    return _base64_digest(hashlib.sha256(data))


def _base64_digest(sha: Any) -> str:
    """The form ``x-amz-checksum-sha256`` takes."""
    return base64.b64encode(sha.digest()).decode("ascii")
