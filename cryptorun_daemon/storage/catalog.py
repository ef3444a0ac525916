"""Scan ``{root}/{tier}`` into typed partition entries.

The walk follows the layout level by level and never follows symlinks.
Anything that does not fit (a stray file, ``symbol=btc_usd``, ``hour=24``, a
linked directory) is skipped, counted in
``cryptorun_catalog_ignored_paths_total{tier}`` and logged once; a scan never
crashes on a hostile or foreign tree.

Scans are blocking (``os.scandir``, manifest reads, maybe hashing) and meant
to run in a worker thread; a :class:`Catalog` is safe to share between threads.
Parsed manifests are cached by the manifest file's identity, so a no-change
re-scan of a window costs two ``stat`` calls per partition; a scan that finds
more than :data:`MAX_CACHED_MANIFESTS` manifests (a full listing of a long
history) leaves no cache behind, so memory never follows the history.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

import structlog

from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import PathRejectedError, StorageError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.storage.layout import (
    HOURLY_TIERS,
    MANIFEST_NAME,
    SUCCESS_MARKER,
    PartitionKey,
    parse_partition_parts,
)
from cryptorun_daemon.storage.manifest import (
    DEFAULT_HASH_CACHE,
    HashCache,
    Manifest,
    compute_manifest,
)

log = structlog.get_logger("cryptorun.catalog")
_MAX_WARNED = 10_000
#: Parsed manifests kept per tier between scans (about four days of 100 hourly
#: series): what repeated windowed scans (simulate) reuse. Also the bound for the
#: caches of rendered and parsed listings in the replication transport.
MAX_CACHED_MANIFESTS: Final = 10_000

# (region, epoch) to use when a sealed partition has no manifest yet.
ManifestOwner = tuple[str, int]


@dataclass(frozen=True)
class CatalogEntry:
    """One partition directory as found on disk.

    ``sealed`` means ``_SUCCESS`` exists. ``manifest`` is ``None`` when the
    partition is unsealed, or sealed without a readable manifest (``problem``
    says why); such a partition is never replicated as-is.
    """

    key: PartitionKey
    directory: Path
    sealed: bool
    manifest: Manifest | None
    problem: str | None = None

    @property
    def replicable(self) -> bool:
        return self.sealed and self.manifest is not None


class Catalog:
    """The partitions of one storage root.

    Error handling: per-path problems are counted and skipped; only an
    unreadable root propagates ``OSError``. Resource handling: a tier's cache
    holds what its last scan found (entries not seen are dropped), and nothing
    when that was more than :data:`MAX_CACHED_MANIFESTS` manifests.
    """

    def __init__(
        self,
        root: Path,
        *,
        metrics: Metrics | None = None,
        hash_cache: HashCache | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.root = root
        self._metrics = metrics
        self._hash_cache = hash_cache if hash_cache is not None else DEFAULT_HASH_CACHE
        self._now = clock if clock is not None else (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        # Per tier: partition directory → (manifest file identity, parsed manifest).
        self._manifests: dict[Tier, dict[str, tuple[tuple[int, int, int], Manifest]]] = {}
        self._warned: set[str] = set()
        self.ignored = 0

    def cached(self, tier: Tier) -> int:
        """How many parsed manifests of ``tier`` the catalog keeps between scans."""
        with self._lock:
            return len(self._manifests.get(tier, {}))

    # --- scanning ---------------------------------------------------------------

    def scan(
        self,
        tier: Tier,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        owner: ManifestOwner | None = None,
    ) -> list[CatalogEntry]:
        """Every partition of ``tier`` overlapping ``[start, end)``, sorted oldest first.

        With ``owner`` set, a partition sealed by a foreign writer (``_SUCCESS``
        only) gets its manifest computed and written here, as the owning
        region; without it such a partition is reported with ``manifest=None``.
        """
        return [
            CatalogEntry(key, Path(directory), sealed, manifest, problem)
            for key, directory, sealed, manifest, problem in self._scan(tier, start, end, owner)
        ]

    def sealed_manifests(
        self,
        tier: Tier,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        owner: ManifestOwner | None = None,
    ) -> list[Manifest]:
        """Manifests of the replicable partitions overlapping ``[start, end)``."""
        return [
            manifest
            for _key, _dir, sealed, manifest, _problem in self._scan(tier, start, end, owner)
            if sealed and manifest is not None
        ]

    def _scan(
        self,
        tier: Tier,
        start: datetime | None,
        end: datetime | None,
        owner: ManifestOwner | None,
    ) -> list[_Found]:
        """What :meth:`scan` reports, as plain tuples (directories as strings).

        A partition whose manifest file is unchanged since the last scan (same
        size, mtime and inode) reuses the parsed manifest and its key: two
        ``stat`` calls and no parsing, no ``Path`` objects, which is most of
        what a repeated window scan (simulate, listings) costs.
        """
        tier_dir = self.root / tier
        found: list[_Found] = []
        with self._lock:
            previous = self._manifests.get(tier, {})
            current: dict[str, tuple[tuple[int, int, int], Manifest]] = {}
            if tier_dir.is_dir():
                for parts, directory in self._walk(tier, str(tier_dir), start, end):
                    hit = _unchanged(directory, previous)
                    if hit is not None:
                        current[directory] = hit
                        key = hit[1].key
                    else:
                        try:
                            key = parse_partition_parts(tier, parts)
                        except PathRejectedError as exc:
                            self._ignore(tier, Path(directory), str(exc))
                            continue
                    if start is not None and key.end <= start:
                        continue
                    if end is not None and key.start >= end:
                        continue
                    if hit is not None:
                        found.append((key, directory, True, hit[1], None))
                    else:
                        found.append(self._entry(key, directory, current, owner))
            # A full scan of a long history: cached, it would keep every manifest
            # of the tier in memory for good (hundreds of MB at 100k partitions).
            self._manifests[tier] = current if len(current) <= MAX_CACHED_MANIFESTS else {}
        # The key's own order as a plain tuple: the dataclass comparison builds
        # two tuples per comparison.
        found.sort(key=lambda f: _order(f[0]))
        return found

    def iter_sealed(self, tier: Tier) -> Iterator[tuple[PartitionKey, Path, bytes]]:
        """Every sealed partition of ``tier`` with its raw manifest bytes, as the walk finds it.

        Unlike :meth:`scan` nothing is cached or collected: memory stays flat
        however many partitions the tier holds (the scrub's walk). Partitions
        whose manifest cannot be read are yielded with empty bytes.
        """
        tier_dir = self.root / tier
        if not tier_dir.is_dir():
            return
        for parts, where in self._walk(tier, str(tier_dir), None, None):
            directory = Path(where)
            try:
                key = parse_partition_parts(tier, parts)
            except PathRejectedError as exc:
                self._ignore(tier, directory, str(exc))
                continue
            if not (directory / SUCCESS_MARKER).is_file():
                continue
            try:
                raw = (directory / MANIFEST_NAME).read_bytes()
            except OSError:
                raw = b""
            yield key, directory, raw

    def _walk(
        self, tier: Tier, tier_dir: str, start: datetime | None, end: datetime | None
    ) -> Iterator[tuple[list[str], str]]:
        depth = 5 if tier in HOURLY_TIERS else 4
        stack: list[tuple[list[str], str]] = [([], tier_dir)]
        days = _window_days(start, end)
        while stack:
            parts, directory = stack.pop()
            if len(parts) == 3 and days is not None:
                # A short window: look up its days by name instead of listing every
                # day of the series, so a windowed scan costs the same at any history.
                for day in days:
                    name = f"date={day}"
                    path = os.path.join(directory, name)
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        child = [*parts, name]
                        if len(child) == depth:
                            yield child, path
                        else:
                            stack.append((child, path))
                    else:
                        self._ignore(
                            tier, Path(path), "not a directory (symlinks are never followed)"
                        )
                continue
            try:
                iterator = os.scandir(directory)
            except OSError as exc:
                self._ignore(tier, Path(directory), f"unreadable: {exc}")
                continue
            with iterator:
                for item in iterator:
                    if len(parts) == 0 and item.name.startswith((".", "_")):
                        # Editor and temp files are not data; ``_divergent/`` and
                        # other ``_`` folders are ours and hold set-aside copies.
                        continue
                    if item.is_symlink() or not item.is_dir(follow_symlinks=False):
                        self._ignore(
                            tier, Path(item.path), "not a directory (symlinks are never followed)"
                        )
                        continue
                    child = [*parts, item.name]
                    if len(child) == 4 and not _date_may_overlap(item.name, start, end):
                        continue
                    if len(child) == depth:
                        yield child, item.path
                    else:
                        stack.append((child, item.path))

    def _entry(
        self,
        key: PartitionKey,
        where: str,
        current: dict[str, tuple[tuple[int, int, int], Manifest]],
        owner: ManifestOwner | None,
    ) -> _Found:
        """The partition at ``where`` when :func:`_unchanged` found nothing to reuse."""
        directory = Path(where)
        sealed = (directory / SUCCESS_MARKER).is_file()
        if not sealed:
            return (key, where, False, None, None)
        manifest_path = directory / MANIFEST_NAME
        try:
            st = manifest_path.stat()
        except FileNotFoundError:
            st = None
        if st is not None:
            identity = (st.st_size, st.st_mtime_ns, st.st_ino)
            try:
                manifest = Manifest.from_bytes(manifest_path.read_bytes())
                if manifest.key != key:
                    raise StorageError(f"manifest names partition {manifest.partition}")
            except (OSError, StorageError) as exc:
                problem = f"unusable manifest: {exc}"
            else:
                current[where] = (identity, manifest)
                return (key, where, True, manifest, None)
        else:
            problem = "sealed without a manifest"
        if owner is None:
            return (key, where, True, None, problem)
        try:
            manifest = compute_manifest(
                directory,
                key,
                writer_region=owner[0],
                epoch=owner[1],
                sealed_at=self._now(),
                cache=self._hash_cache,
            )
            atomic_write_bytes(manifest_path, manifest.to_bytes())
        except (OSError, StorageError) as exc:
            self._ignore(key.tier, directory, f"cannot compute manifest: {exc}")
            return (key, where, True, None, str(exc))
        log.info("computed manifest for a partition sealed without one", partition=str(key))
        return (key, where, True, manifest, None)

    def _ignore(self, tier: Tier, path: Path, why: str) -> None:
        self.ignored += 1
        if self._metrics is not None:
            self._metrics.catalog_ignored_paths_total.labels(tier=tier).inc()
        text = str(path)
        if text not in self._warned and len(self._warned) < _MAX_WARNED:
            self._warned.add(text)
            log.warning("path outside the partition layout ignored", tier=tier, path=text, why=why)


#: One partition as a scan found it: (key, directory, sealed, manifest, problem).
_Found = tuple[PartitionKey, str, bool, Manifest | None, str | None]


def _unchanged(
    where: str, previous: dict[str, tuple[tuple[int, int, int], Manifest]]
) -> tuple[tuple[int, int, int], Manifest] | None:
    """The cached manifest of the sealed partition at ``where``, if its file is unchanged."""
    cached = previous.get(where)
    if cached is None:
        return None
    try:
        if not stat.S_ISREG(os.stat(os.path.join(where, SUCCESS_MARKER)).st_mode):
            return None
        st = os.stat(os.path.join(where, MANIFEST_NAME))
    except OSError:
        return None
    return cached if cached[0] == (st.st_size, st.st_mtime_ns, st.st_ino) else None


def _order(key: PartitionKey) -> tuple[object, ...]:
    """``key``'s sort order (the dataclass's field order) as one tuple."""
    return (key.day, key.hour, key.tier, key.dataset, key.venue, key.symbol)


#: Windows of at most this many days are walked by looking their days up by name.
_PROBE_DAYS: Final = 62


def _window_days(start: datetime | None, end: datetime | None) -> list[str] | None:
    """The ISO days ``[start, end)`` touches when there are few enough to look up."""
    if start is None or end is None or end <= start:
        return None
    first, last = start.astimezone(UTC).date(), (end.astimezone(UTC) - _TICK).date()
    if (last - first).days >= _PROBE_DAYS:
        return None
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


_TICK: Final = timedelta(microseconds=1)


def _date_may_overlap(name: str, start: datetime | None, end: datetime | None) -> bool:
    """Cheap pruning of whole ``date=`` directories; malformed names are kept for the parser."""
    if start is None and end is None:
        return True
    try:
        day = date.fromisoformat(name.removeprefix("date="))
    except ValueError:
        return True
    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if start is not None and day_start + timedelta(days=1) <= start:
        return False
    return not (end is not None and day_start >= end)
