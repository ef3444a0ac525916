"""``_manifest.json``: what a sealed partition contains, and how to recognise it.

Content hashes are **xxh3-128** (``xxhash``), not sha256. The threat is torn,
truncated or bit-flipped copies, not an adversary forging collisions (peer
calls are authenticated and the hashes travel over the same channel as the
data), and xxh3 hashes at memory bandwidth (~10x sha256) so verifying every
byte never becomes the replication bottleneck. 128 bits make an accidental
collision across any realistic number of files negligible. Each hash is written
as ``"xxh3_128:<hex>"`` so the algorithm can change without ambiguity.

Hashing is expensive, so :class:`HashCache` remembers facts per file identity
``(path, size, mtime_ns, inode)``: a file that was not rewritten is never
hashed again; any rewrite changes at least one of the four.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import xxhash

from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.storage.layout import (
    MANIFEST_NAME,
    PartitionKey,
    is_data_file_name,
    parse_partition_path,
    parse_tier,
)
from cryptorun_daemon.timefmt import format_rfc3339, parse_rfc3339

HASH_ALGORITHM: Final = "xxh3_128"
MANIFEST_FORMAT: Final = 1
HASH_CHUNK: Final = 4 << 20


def new_hasher() -> Any:
    """A fresh streaming xxh3-128 hasher (``update``/``hexdigest``)."""
    return xxhash.xxh3_128()


def format_hash(hexdigest: str) -> str:
    return f"{HASH_ALGORITHM}:{hexdigest}"


def hash_bytes(data: bytes) -> str:
    return format_hash(xxhash.xxh3_128_hexdigest(data))


def hash_file(path: Path, *, chunk: int = HASH_CHUNK) -> str:
    """The ``xxh3_128:<hex>`` hash of a whole file, read in large chunks."""
    hasher = new_hasher()
    with path.open("rb", buffering=0) as handle:
        buffer = bytearray(chunk)
        view = memoryview(buffer)
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            hasher.update(view[:n])
    return format_hash(hasher.hexdigest())


@dataclass(frozen=True)
class FileFacts:
    """What a manifest records about one data file."""

    size: int
    hash: str
    rows: int | None
    schema_fingerprint: str | None
    inspected: bool = True  # False: only hashed, the Parquet footer was not read


def _parquet_facts(path: Path) -> tuple[int | None, str | None]:
    """Rows and schema fingerprint from a Parquet footer; ``(None, None)`` if not Parquet."""
    if path.suffix != ".parquet":
        return None, None
    import pyarrow.parquet as pq  # deferred: only sealing needs pyarrow, not every import

    try:
        metadata = pq.read_metadata(path)
        schema = metadata.schema.to_arrow_schema()
    except Exception as exc:  # pyarrow raises its own hierarchy (ArrowInvalid, OSError…)
        raise StorageError(f"{path} is not a readable Parquet file: {exc}") from exc
    return int(metadata.num_rows), schema_fingerprint(schema)


def schema_fingerprint(schema: Any) -> str:
    """The fingerprint manifests record for an Arrow schema (metadata ignored)."""
    text = schema.remove_metadata().to_string(show_field_metadata=False)
    return hash_bytes(text.encode())


class HashCache:
    """Remembers :class:`FileFacts` by file identity so unchanged files are hashed once.

    Thread-safe (scans run in worker threads). Bounded: the least recently
    used entries are dropped past ``max_entries``. ``hashed`` counts real
    hashing work, which tests and the bench read.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._entries: OrderedDict[tuple[str, int, int, int], FileFacts] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries
        self.hashed = 0
        self.hashed_bytes = 0

    @staticmethod
    def identity(path: Path, st: os.stat_result) -> tuple[str, int, int, int]:
        return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)

    def lookup(self, path: Path, st: os.stat_result) -> FileFacts | None:
        key = self.identity(path, st)
        with self._lock:
            facts = self._entries.get(key)
            if facts is not None:
                self._entries.move_to_end(key)
            return facts

    def remember(self, path: Path, st: os.stat_result, facts: FileFacts) -> None:
        key = self.identity(path, st)
        with self._lock:
            self._entries[key] = facts
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def facts(self, path: Path, *, inspect: bool = True) -> FileFacts:
        """Facts for ``path``, hashing it only when its identity is new.

        ``inspect=False`` skips the Parquet footer (rows, schema): replicas only
        need the hash, and a damaged copy must not fail before it is compared.
        """
        st = path.stat()
        cached = self.lookup(path, st)
        if cached is not None and (cached.inspected or not inspect):
            return cached
        if cached is not None:
            digest = cached.hash
        else:
            digest = hash_file(path)
            with self._lock:
                self.hashed += 1
                self.hashed_bytes += st.st_size
        rows, fingerprint = _parquet_facts(path) if inspect else (None, None)
        facts = FileFacts(
            size=st.st_size,
            hash=digest,
            rows=rows,
            schema_fingerprint=fingerprint,
            inspected=inspect,
        )
        # A file rewritten while we hashed it must not be cached under either identity.
        if self.identity(path, path.stat()) == self.identity(path, st):
            self.remember(path, st, facts)
        return facts


DEFAULT_HASH_CACHE = HashCache()


@dataclass(frozen=True)
class FileEntry:
    name: str
    bytes: int
    hash: str
    rows: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "rows": self.rows, "hash": self.hash}


@dataclass(frozen=True)
class Manifest:
    """A sealed partition's manifest. ``content_hash`` covers files and schema only.

    Two manifests with equal ``content_hash`` describe byte-identical data even
    when they were sealed at different times, by different regions or epochs;
    that is what "in sync" means for the planner.
    """

    tier: Tier
    partition: str
    files: tuple[FileEntry, ...]
    schema_fingerprint: str | None
    writer_region: str
    epoch: int
    sealed_at: datetime
    sources: tuple[Mapping[str, Any], ...] | None = None
    worst_freshness_seconds: float | None = None
    key: PartitionKey = field(init=False, compare=False, repr=False)
    content_hash: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", parse_partition_path(self.tier, self.partition))
        canonical = json.dumps(
            {
                "files": [[f.name, f.bytes, f.hash] for f in self.files],
                "schema": self.schema_fingerprint,
            },
            separators=(",", ":"),
        )
        object.__setattr__(self, "content_hash", hash_bytes(canonical.encode()))

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def total_rows(self) -> int | None:
        counts = [f.rows for f in self.files]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    def file(self, name: str) -> FileEntry | None:
        for entry in self.files:
            if entry.name == name:
                return entry
        return None

    def to_json(self) -> dict[str, Any]:
        key = self.key
        return {
            "format": MANIFEST_FORMAT,
            "tier": self.tier,
            "partition": self.partition,
            "dataset": key.dataset,
            "venue": key.venue,
            "symbol": key.symbol,
            "window": {"start": format_rfc3339(key.start), "end": format_rfc3339(key.end)},
            "files": [f.to_json() for f in self.files],
            "bytes": self.total_bytes,
            "rows": self.total_rows,
            "hash_algorithm": HASH_ALGORITHM,
            "content_hash": self.content_hash,
            "schema_fingerprint": self.schema_fingerprint,
            "writer_region": self.writer_region,
            "epoch": self.epoch,
            "sealed_at": format_rfc3339(self.sealed_at),
            "sources": [dict(s) for s in self.sources] if self.sources is not None else None,
            "worst_freshness_seconds": self.worst_freshness_seconds,
        }

    def to_bytes(self) -> bytes:
        """Canonical bytes: the source and every replica write exactly these."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse and check a manifest document.

        Error handling: raises :class:`StorageError` when a field is missing or
        mistyped, the partition path is outside the layout, a file name is not
        a data file name, or the recorded ``content_hash`` disagrees with the
        files (a hand-edited or torn manifest).
        """
        try:
            if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
                raise ValueError("not a format-1 manifest")
            files = []
            for item in data["files"]:
                name = str(item["name"])
                if not is_data_file_name(name):
                    raise ValueError(f"file name {name!r} is outside the layout")
                rows = item.get("rows")
                files.append(
                    FileEntry(
                        name=name,
                        bytes=int(item["bytes"]),
                        hash=str(item["hash"]),
                        rows=None if rows is None else int(rows),
                    )
                )
            sources = data.get("sources")
            freshness = data.get("worst_freshness_seconds")
            manifest = cls(
                tier=parse_tier(str(data["tier"])),
                partition=str(data["partition"]),
                files=tuple(files),
                schema_fingerprint=data.get("schema_fingerprint"),
                writer_region=str(data["writer_region"]),
                epoch=int(data["epoch"]),
                sealed_at=parse_rfc3339(str(data["sealed_at"])),
                sources=tuple(sources) if isinstance(sources, list) else None,
                worst_freshness_seconds=None if freshness is None else float(freshness),
            )
        except StorageError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"invalid manifest: {exc}") from exc
        recorded = data.get("content_hash")
        if recorded is not None and recorded != manifest.content_hash:
            raise StorageError(
                f"manifest of {manifest.partition} records content_hash {recorded} "
                f"but its files hash to {manifest.content_hash}"
            )
        return manifest

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"manifest is not JSON: {exc}") from exc
        return cls.from_json(data)


def read_manifest(partition_dir: Path) -> Manifest:
    """Load ``partition_dir/_manifest.json`` (``StorageError`` when absent or invalid)."""
    try:
        raw = (partition_dir / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read {partition_dir / MANIFEST_NAME}: {exc}") from exc
    return Manifest.from_bytes(raw)


def data_file_names(partition_dir: Path) -> list[str]:
    """Sorted data files of a partition: visible regular files, no markers, no temps.

    Error handling: a subdirectory or symlink inside a partition is a layout
    violation and raises :class:`StorageError` (sealing it would hide data).
    """
    names = []
    with os.scandir(partition_dir) as entries:
        for entry in entries:
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                raise StorageError(
                    f"{entry.path} is not a regular file; partitions hold files only"
                )
            if not is_data_file_name(entry.name):
                raise StorageError(f"{entry.path}: file name outside the layout")
            names.append(entry.name)
    return sorted(names)


def compute_manifest(
    partition_dir: Path,
    key: PartitionKey,
    *,
    writer_region: str,
    epoch: int,
    sealed_at: datetime,
    sources: Sequence[Mapping[str, Any]] | None = None,
    worst_freshness_seconds: float | None = None,
    cache: HashCache | None = None,
) -> Manifest:
    """Describe the data files currently in ``partition_dir`` (blocking; run in a thread)."""
    cache = cache if cache is not None else DEFAULT_HASH_CACHE
    entries: list[FileEntry] = []
    fingerprints: set[str] = set()
    for name in data_file_names(partition_dir):
        facts = cache.facts(partition_dir / name)
        entries.append(FileEntry(name=name, bytes=facts.size, hash=facts.hash, rows=facts.rows))
        if facts.schema_fingerprint is not None:
            fingerprints.add(facts.schema_fingerprint)
    if len(fingerprints) > 1:
        # Mixed schemas inside one partition are recorded, not hidden: the
        # fingerprint then differs from every single-schema partition.
        fingerprint: str | None = "mixed:" + hash_bytes("|".join(sorted(fingerprints)).encode())
    else:
        fingerprint = next(iter(fingerprints), None)
    return Manifest(
        tier=key.tier,
        partition=key.relpath,
        files=tuple(entries),
        schema_fingerprint=fingerprint,
        writer_region=writer_region,
        epoch=epoch,
        sealed_at=sealed_at,
        sources=tuple(sources) if sources is not None else None,
        worst_freshness_seconds=worst_freshness_seconds,
    )
