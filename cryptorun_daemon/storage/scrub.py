"""Scrub: bring a root's change-feed index back in line with its disk.

The feed records what goes through this codebase (seals, replica commits,
supersedes). Some changes do not: a partition sealed while the feed could not
be written, a tree copied or renamed in by another tool, a file deleted by
hand, a root restored from a backup. The scrub walks ``{root}/{tier}``
(through the :class:`~cryptorun_daemon.storage.catalog.Catalog`, never
following symlinks) and compares it with the index:

- a sealed, complete partition the index lacks or records with another
  content hash is recorded ``sealed`` (a replica of this root will pull it);
- an indexed partition that is gone, unsealed, or missing a file or bytes the
  manifest lists is recorded ``lost`` (the index forgets it, so this root's
  digests differ from its source's and anti-entropy repairs it).

Cost: O(partitions) ``stat`` calls and manifest reads, in flat memory (the
walk yields one partition at a time into a temporary SQLite table; only the
differences come back), so it runs in a worker thread on a slow schedule
(``replication.scrub_interval``) and on demand; the digest comparison itself
never needs it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.config import Tier
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.storage.change_feed import ChangeFeed, ChangeKind
from cryptorun_daemon.storage.layout import SUCCESS_MARKER, PartitionKey, parse_partition_path
from cryptorun_daemon.storage.manifest import Manifest, read_manifest

# Findings recorded per feed transaction.
_BATCH = 1000


@dataclass(frozen=True)
class ScrubReport:
    """What one scrub of one tier found (and recorded)."""

    tier: Tier
    partitions: int
    discovered: int
    lost: int


def files_complete(directory: Path, manifest: Manifest) -> bool:
    """Every file ``manifest`` lists is in ``directory`` with its listed size (a ``stat`` each)."""
    for item in manifest.files:
        try:
            if os.stat(directory / item.name).st_size != item.bytes:
                return False
        except OSError:
            return False
    return True


def scrub_tier(
    catalog: Catalog, feed: ChangeFeed, tier: Tier, *, stop: threading.Event | None = None
) -> ScrubReport:
    """Compare ``tier`` on disk with the index and record the differences (blocking).

    ``stop`` set ends the walk before its next partition: an incomplete walk
    would take every partition it did not reach for lost, so nothing is
    recorded (a daemon stopping during the start-up scrub of a long history
    does not wait for the whole walk).

    Error handling: per-partition problems are the catalog's (counted and
    skipped); a feed that cannot be written, and a scrub stopped through
    ``stop``, raise :class:`~cryptorun_daemon.errors.StorageError`.
    """
    # The index first, then the disk: a seal landing in between is on disk but
    # not in the snapshot, and is merely recorded twice (harmless).
    counted = [0]

    def complete_on_disk() -> Iterator[tuple[str, str]]:
        for key, directory, raw in catalog.iter_sealed(tier):
            if stop is not None and stop.is_set():
                raise StorageError(f"scrub of {tier} stopped after {counted[0]} partitions")
            facts = _quick_facts(raw)
            # An unreadable manifest or a missing or short file: not committed here.
            if facts is not None and _sizes_match(directory, facts[1]):
                counted[0] += 1
                yield key.relpath, facts[0]

    differing, unseen = diff_against(feed, tier, complete_on_disk())
    found: list[tuple[PartitionKey, ChangeKind, Manifest | None]] = []
    discovered = lost = 0
    for path in differing:
        key = parse_partition_path(tier, path)
        try:
            manifest = read_manifest(key.directory(catalog.root))
        except StorageError:
            continue  # changed since the walk; the next scrub looks again
        if manifest.key == key:
            found.append((key, "sealed", manifest))
            discovered += 1
        if len(found) >= _BATCH:  # a root found full of unindexed partitions stays flat
            feed.record_many(found)
            found.clear()
    for path in unseen:
        key = parse_partition_path(tier, path)
        # Looked at again just before recording: a seal or repair may have
        # committed it since the walk passed by.
        if not _complete_now(key.directory(catalog.root)):
            found.append((key, "lost", None))
            lost += 1
    if found:
        feed.record_many(found)
    return ScrubReport(tier, counted[0], discovered, lost)


def _quick_facts(raw: bytes) -> tuple[str, list[tuple[str, int]]] | None:
    """Content hash and ``(name, bytes)`` per file, without a full manifest check.

    The walk only needs these to compare with the index; a manifest that
    differs from the index is then parsed and checked in full.
    """
    try:
        doc = json.loads(raw)
        return str(doc["content_hash"]), [(str(f["name"]), int(f["bytes"])) for f in doc["files"]]
    except (ValueError, KeyError, TypeError):
        return None


def _sizes_match(directory: Path, files: list[tuple[str, int]]) -> bool:
    for name, size in files:
        try:
            if os.stat(directory / name).st_size != size:
                return False
        except OSError:
            return False
    return True


def _complete_now(directory: Path) -> bool:
    if not (directory / SUCCESS_MARKER).is_file():
        return False
    try:
        manifest = read_manifest(directory)
    except StorageError:
        return False
    return files_complete(directory, manifest)


def diff_against(
    feed: ChangeFeed, tier: Tier, seen: Iterable[tuple[str, str]]
) -> tuple[list[str], list[str]]:
    """Compare ``(partition, content hash)`` pairs found on disk with the index.

    Returns ``(differing, unseen)``: paths seen with no or another indexed
    hash, and indexed paths never seen. Runs on a connection of its own
    (a temporary table takes the pairs in batches), so memory stays flat
    and seals are not held up while the walk feeding ``seen`` runs.
    """
    feed.head()  # creates the database and its schema when missing
    db = sqlite3.connect(feed.path, timeout=30.0, isolation_level=None)
    try:
        db.execute("PRAGMA temp_store=FILE")
        db.execute("CREATE TEMP TABLE seen (partition TEXT PRIMARY KEY, content_hash TEXT)")
        batch: list[tuple[str, str]] = []
        for pair in seen:
            batch.append(pair)
            if len(batch) >= 10_000:
                db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", batch)
                batch.clear()
        db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?)", batch)
        differing = [
            str(r[0])
            for r in db.execute(
                "SELECT s.partition FROM seen s LEFT JOIN current c "
                "ON c.tier=? AND c.partition=s.partition "
                "WHERE c.content_hash IS NULL OR c.content_hash != s.content_hash",
                (tier,),
            )
        ]
        unseen = [
            str(r[0])
            for r in db.execute(
                "SELECT c.partition FROM current c WHERE c.tier=? AND NOT EXISTS "
                "(SELECT 1 FROM seen s WHERE s.partition=c.partition)",
                (tier,),
            )
        ]
    except sqlite3.Error as exc:
        raise StorageError(f"cannot compare the disk with {feed.path}: {exc}") from exc
    finally:
        db.close()
    return differing, unseen
