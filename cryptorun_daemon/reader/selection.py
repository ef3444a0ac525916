"""Which partition versions a read uses: point-in-time, as-of, tier cascade.

Rules, applied per partition of the requested dataset, venues and symbols:

1. **Point-in-time.** Only partitions whose whole span lies in ``[start, end)``
   (``start <= key.start`` and ``key.end <= end``); one crossing either edge
   is out, so nothing at or after ``end`` is read.
2. **Sealed only** (unless ``include_unsealed``): ``_SUCCESS`` and a readable
   manifest; a sealed partition whose manifest is unusable is skipped and
   reported, never guessed at.
3. **As-of** (``as_of=T``): among the live version and the versions kept under
   ``{root}/_superseded/{tier}/{partition}/{stamp}-{label}/``, the one with the
   latest ``sealed_at`` not after ``T``; a partition with no such version did
   not exist yet at ``T``. A superseded version keeps its own manifest; its
   files are in its folder, or — for a version kept at a re-seal in place (a
   late fill adds a file, see :func:`cryptorun_daemon.storage.superseded.keep_superseded_manifest`)
   — still in the live partition, checked by name and size.
4. **Tier cascade**: tiers in the order given; a span already served by an
   earlier tier (a cold day) is never read from a later one (that day's warm
   hours), so no row is read twice.

The walk goes level by level through one dataset's folders only, filters
venues and symbols by folder name, prunes days outside the window, never
follows a symlink and skips anything outside the layout. Blocking (directory
listings, manifest reads): run in a worker thread from async code.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import PathRejectedError, ReadError, StorageError
from cryptorun_daemon.reader.request import ReadRequest
from cryptorun_daemon.storage.layout import (
    HOURLY_TIERS,
    SUCCESS_MARKER,
    SUPERSEDED_DIR,
    PartitionKey,
    parse_partition_parts,
)
from cryptorun_daemon.storage.manifest import Manifest, data_file_names, read_manifest
from cryptorun_daemon.timefmt import format_rfc3339

LIVE = "live"
UNSEALED = "unsealed"


@dataclass(frozen=True)
class Part:
    """One partition version chosen for a read, with the files to read in order.

    ``version`` is ``live`` (the partition folder), ``unsealed`` (live but not
    sealed; only with ``include_unsealed``) or ``_superseded/<name>`` (a version
    current at ``as_of``). ``manifest`` is ``None`` only for unsealed parts.
    """

    key: PartitionKey
    version: str
    files: tuple[Path, ...]
    manifest: Manifest | None

    def provenance(self) -> dict[str, Any]:
        """Which tier, partition, version and manifest this part came from (JSON-ready)."""
        manifest = self.manifest
        return {
            "tier": self.key.tier,
            "partition": self.key.relpath,
            "version": self.version,
            "manifest_content_hash": manifest.content_hash if manifest else None,
            "sealed_at": format_rfc3339(manifest.sealed_at) if manifest else None,
            "writer_region": manifest.writer_region if manifest else None,
            "epoch": manifest.epoch if manifest else None,
            "schema_fingerprint": manifest.schema_fingerprint if manifest else None,
            "files": [path.name for path in self.files],
        }


@dataclass
class Selection:
    """The parts of a read (oldest first) and what was left out, with why."""

    parts: list[Part] = field(default_factory=list)
    unsealed_skipped: int = 0
    shadowed: int = 0  # spans served by an earlier tier of the cascade
    not_yet_sealed: int = 0  # as-of: no version sealed by then
    problems: list[str] = field(default_factory=list)

    def tiers_used(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in self.parts:
            counts[part.key.tier] = counts.get(part.key.tier, 0) + 1
        return counts


def select_parts(root: Path, request: ReadRequest) -> Selection:
    """Apply the rules in the module docstring to ``root`` for ``request``.

    Error handling: per-partition problems (an unreadable manifest, a stray
    folder) are skipped and listed in :attr:`Selection.problems`; a version
    whose listed file is gone or changed size raises :class:`ReadError`
    (the read would be silently incomplete otherwise).
    """
    selection = Selection()
    # Per market, the spans already served by earlier tiers: sorted, never overlapping.
    served: dict[tuple[str, str], list[tuple[datetime, datetime]]] = {}
    for tier in request.tiers:
        chosen: list[Part] = []
        seen: set[PartitionKey] = set()
        for key, directory in _partition_dirs(root / tier, tier, request):
            seen.add(key)
            part = _choose_version(root, key, directory, request, selection)
            if part is not None:
                chosen.append(part)
        if request.as_of is not None:
            # A partition moved wholly aside (no live folder) may still have been current then.
            for key, directory in _partition_dirs(root / SUPERSEDED_DIR / tier, tier, request):
                if key not in seen:
                    part = _choose_version(root, key, None, request, selection, versions=directory)
                    if part is not None:
                        chosen.append(part)
        accepted = []
        for part in chosen:
            if _overlaps(served.get((part.key.venue, part.key.symbol), []), part.key):
                selection.shadowed += 1
            else:
                accepted.append(part)
        # Only after the whole tier: parts of one tier never overlap each other.
        for part in accepted:
            spans = served.setdefault((part.key.venue, part.key.symbol), [])
            bisect.insort(spans, (part.key.start, part.key.end))
        selection.parts.extend(accepted)
    selection.parts.sort(key=lambda p: (p.key.start, p.key.venue, p.key.symbol, p.key.tier))
    return selection


def _overlaps(spans: list[tuple[datetime, datetime]], key: PartitionKey) -> bool:
    """Whether ``key``'s span overlaps one of ``spans`` (sorted, non-overlapping)."""
    index = bisect.bisect_left(spans, (key.end,))  # spans starting before key.end
    return index > 0 and spans[index - 1][1] > key.start


def _choose_version(
    root: Path,
    key: PartitionKey,
    directory: Path | None,
    request: ReadRequest,
    selection: Selection,
    *,
    versions: Path | None = None,
) -> Part | None:
    """The version of ``key`` this read uses, or ``None`` (counted in ``selection``)."""
    live: Manifest | None = None
    if directory is not None:
        if not (directory / SUCCESS_MARKER).is_file():
            if request.include_unsealed:
                try:
                    names = data_file_names(directory)
                except (OSError, StorageError) as exc:
                    selection.problems.append(f"{key}: {exc}")
                    return None
                if names:
                    return Part(key, UNSEALED, tuple(directory / n for n in names), None)
            selection.unsealed_skipped += 1
            if request.as_of is None:
                return None
        else:
            try:
                live = read_manifest(directory)
                if live.key != key:
                    raise StorageError(f"manifest names partition {live.partition}")
            except StorageError as exc:
                selection.problems.append(f"{key}: {exc}")
                return None
    if request.as_of is None:
        if live is None or directory is None:
            return None
        return _with_files(key, LIVE, live, directory, directory)
    # (seal time, live wins a tie, version name, manifest, folder holding its files)
    candidates: list[tuple[datetime, int, str, Manifest, Path]] = []
    if live is not None and directory is not None:
        candidates.append((live.sealed_at, 1, LIVE, live, directory))
    kept = versions if versions is not None else root / SUPERSEDED_DIR / key.tier / key.relpath
    for name, folder in _superseded_versions(kept):
        try:
            manifest = read_manifest(folder)
        except StorageError:
            continue  # ``-uncommitted`` strays and unreadable copies were never a version
        if manifest.key == key:
            candidates.append((manifest.sealed_at, 0, f"{SUPERSEDED_DIR}/{name}", manifest, folder))
    visible = [c for c in candidates if c[0] <= request.as_of]
    if not visible:
        if candidates:
            selection.not_yet_sealed += 1
        return None
    _, _, version, manifest, folder = max(visible, key=lambda c: (c[0], c[1]))
    live_dir = directory if directory is not None else key.directory(root)
    return _with_files(key, version, manifest, folder, live_dir)


def _with_files(
    key: PartitionKey, version: str, manifest: Manifest, folder: Path, live_dir: Path
) -> Part:
    """The part for ``manifest``'s version, its files found in ``folder`` or the live partition.

    Error handling: :class:`ReadError` when a listed file is in neither place
    or its size differs from the manifest (the version can no longer be read).
    """
    files: list[Path] = []
    for entry in manifest.files:
        for place in (folder, live_dir):
            path = place / entry.name
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if not path.is_symlink() and path.is_file() and st.st_size == entry.bytes:
                files.append(path)
                break
        else:
            raise ReadError(
                f"{key} ({version}) lists {entry.name} ({entry.bytes} bytes), "
                "which is no longer present at that size"
            )
    return Part(key, version, tuple(files), manifest)


def _superseded_versions(folder: Path) -> Iterator[tuple[str, Path]]:
    """Version folders kept for one partition (newest name last); symlinks never followed."""
    if folder.is_symlink():
        return
    try:
        with os.scandir(folder) as entries:
            found = [
                (e.name, Path(e.path))
                for e in entries
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return
    yield from sorted(found)


def _partition_dirs(
    base: Path, tier: Tier, request: ReadRequest
) -> Iterator[tuple[PartitionKey, Path]]:
    """Partition folders of ``request.dataset`` under ``base`` lying inside the window."""
    hourly = tier in HOURLY_TIERS
    for venue_name, venue_dir in _subdirs(base / request.dataset, "venue="):
        if request.venues is not None and venue_name.removeprefix("venue=") not in request.venues:
            continue
        for symbol_name, symbol_dir in _subdirs(venue_dir, "symbol="):
            if (
                request.symbols is not None
                and symbol_name.removeprefix("symbol=") not in request.symbols
            ):
                continue
            for date_name, date_dir in _subdirs(symbol_dir, "date="):
                if not _day_may_fit(date_name, request.start, request.end):
                    continue
                leaves = _subdirs(date_dir, "hour=") if hourly else [(None, date_dir)]
                for hour_name, directory in leaves:
                    parts = [request.dataset, venue_name, symbol_name, date_name]
                    if hour_name is not None:
                        parts.append(hour_name)
                    try:
                        key = parse_partition_parts(tier, parts)
                    except PathRejectedError:
                        continue  # not the layout: never data
                    if request.start <= key.start and key.end <= request.end:
                        yield key, directory


def _subdirs(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    """Real (non-symlink) subfolders named ``prefix…``, sorted; empty when ``folder`` is absent."""
    if folder.is_symlink():
        return []  # a linked folder could lead outside the root
    try:
        with os.scandir(folder) as entries:
            return sorted(
                (e.name, Path(e.path))
                for e in entries
                if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _day_may_fit(name: str, start: datetime, end: datetime) -> bool:
    """Cheap pruning: could any partition of this ``date=`` folder lie in the window?"""
    try:
        day = date.fromisoformat(name.removeprefix("date="))
    except ValueError:
        return False
    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return day_start + timedelta(days=1) > start and day_start < end
