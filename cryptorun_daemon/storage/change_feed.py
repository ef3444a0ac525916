"""The change feed of one storage root: an append-only, position-addressed log.

Every seal, supersede, quarantine and scrub finding of a warm/cold partition
under ``{root}`` is appended to ``{root}/_state/feed.sqlite3`` (SQLite in WAL
mode, from the standard library; docs/WARM_COLD.md argues the choice). In the
same transaction the feed keeps:

- ``current``: what this root holds now, one row per committed partition
  (content hash, epoch, day, hour);
- ``days``: per tier and day the number of committed partitions and an
  XOR-folded 128-bit digest of ``(partition, content hash)`` pairs, updated in
  O(1) per change (XOR removes the old pair and adds the new one), so that
  anti-entropy compares a year in O(days).

Positions are SQLite ``AUTOINCREMENT`` keys: strictly increasing and never
reused, even after pruning. They are meaningful only together with the
``feed_id``, a random name created with the database: a restored, recreated
or other region's feed has another id, and a reader holding a position of
one incarnation is told to resync (:class:`ResyncNeededError`) instead of
silently skipping. Retention keeps the newest ``retention`` entries; a reader
whose position is older than the oldest kept entry is told to resync too.

All methods block (SQLite I/O, an fsync per commit); call them from a thread
in async code. One :class:`ChangeFeed` per root and process
(:func:`feed_for`) is safe to share between threads; several processes may
append to one root's feed at once (SQLite's locking, ``busy_timeout``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import structlog
import xxhash

from cryptorun_daemon.config import ACTIVE_PASSIVE_TIERS, Tier
from cryptorun_daemon.errors import ResyncNeededError, StorageError
from cryptorun_daemon.storage.layout import HOURLY_TIERS, PartitionKey, parse_partition_path
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.feed")

FEED_FILE: Final = "feed.sqlite3"
#: Entries kept by default: about three weeks of 100 markets x 2 datasets hourly.
DEFAULT_RETENTION: Final = 100_000

#: ``sealed``: this root now holds the manifest's content; ``superseded``: a
#: committed version was moved aside; ``quarantined``: a manifest was refused
#: and kept in quarantine; ``lost``: the scrub found a committed partition
#: missing or incomplete on disk (the index forgets it, anti-entropy repairs it).
ChangeKind = Literal["sealed", "superseded", "quarantined", "lost"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    tier TEXT NOT NULL,
    partition TEXT NOT NULL,
    kind TEXT NOT NULL,
    content_hash TEXT,
    epoch INTEGER,
    manifest BLOB,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_tier ON changes (tier, position);
CREATE TABLE IF NOT EXISTS current (
    tier TEXT NOT NULL,
    partition TEXT NOT NULL,
    day TEXT NOT NULL,
    hour INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (tier, partition)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS current_by_day ON current (tier, day, hour);
CREATE TABLE IF NOT EXISTS days (
    tier TEXT NOT NULL,
    day TEXT NOT NULL,
    count INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (tier, day)
) WITHOUT ROWID;
"""

_ZERO: Final = "0" * 32


_HOUR_SEGMENT: Final = re.compile(r"hour=(\d{2})")


class _AlreadyHeld(Exception):
    """Internal: a bulk import met a partition the index holds already."""


@dataclass(frozen=True)
class Change:
    """One feed entry. ``manifest`` (canonical bytes) is set for ``sealed`` entries."""

    position: int
    tier: Tier
    partition: str
    kind: ChangeKind
    content_hash: str | None
    epoch: int | None
    manifest: bytes | None
    recorded_at: str


@dataclass(frozen=True)
class FeedPage:
    """Entries of one tier after a position, plus where the feed stands."""

    feed_id: str
    head: int
    oldest: int
    changes: tuple[Change, ...]

    @property
    def next_after(self) -> int:
        """The position to ask after next time (the head when the page was empty)."""
        return self.changes[-1].position if self.changes else self.head


@dataclass(frozen=True)
class Held:
    """One committed partition as the index records it."""

    partition: str
    content_hash: str
    epoch: int


def pair_digest(partition: str, content_hash: str) -> int:
    """The 128-bit value a ``(partition, content hash)`` pair adds to its day's digest."""
    return xxhash.xxh3_128_intdigest(f"{partition}\0{content_hash}".encode())


def fold(pairs: Iterable[tuple[str, str]]) -> str:
    """XOR-fold pairs into a digest (the form ``days`` and hour digests use)."""
    value = 0
    for partition, content_hash in pairs:
        value ^= pair_digest(partition, content_hash)
    return f"{value:032x}"


class ChangeFeed:
    """The feed database of one storage root (see the module docstring).

    Error handling: SQLite failures raise :class:`StorageError`; a reader's
    position this feed cannot answer raises :class:`ResyncNeededError`.
    Resource handling: one connection, opened lazily, shared by threads under
    a lock; :meth:`close` closes it.
    """

    def __init__(self, root: Path, *, retention: int = DEFAULT_RETENTION) -> None:
        self.root = root
        self.path = root / "_state" / FEED_FILE
        self.retention = retention
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._feed_id: str | None = None

    # --- connection ----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        try:
            # WAL: readers never block the appender; synchronous=FULL fsyncs the
            # WAL at every commit, so an acknowledged entry survives power loss.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM meta WHERE key='feed_id'").fetchone()
            if row is None:
                feed_id = uuid.uuid4().hex
                db.execute("INSERT INTO meta VALUES ('feed_id', ?)", (feed_id,))
                db.execute("INSERT INTO meta VALUES ('pruned_through', '0')")
            else:
                feed_id = str(row[0])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.close()
            raise StorageError(f"cannot open the change feed {self.path}: {exc}") from exc
        self._db, self._feed_id = db, feed_id
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def feed_id(self) -> str:
        with self._lock:
            self._conn()
            assert self._feed_id is not None  # set by _conn
            return self._feed_id

    # --- writing -------------------------------------------------------------------

    def record_sealed(self, manifest: Manifest) -> int:
        """This root now holds ``manifest``'s content; return the entry's position."""
        return self._append(
            manifest.key, "sealed", manifest.content_hash, manifest.epoch, manifest.to_bytes()
        )

    def record_removed(
        self, key: PartitionKey, kind: ChangeKind, content_hash: str | None, epoch: int | None
    ) -> int:
        """A committed version left this root (``superseded`` or ``lost``)."""
        return self._append(key, kind, content_hash, epoch, None)

    def record_quarantined(self, manifest: Manifest) -> int:
        """``manifest`` was refused and kept in quarantine (the index is unchanged)."""
        return self._append(
            manifest.key, "quarantined", manifest.content_hash, manifest.epoch, None
        )

    def record_many(self, items: Iterable[tuple[PartitionKey, ChangeKind, Manifest | None]]) -> int:
        """Append several entries in one transaction (the scrub's findings); return the head.

        Each item is ``(key, kind, manifest)``: the new manifest for ``sealed``,
        the version that left for ``superseded``/``lost`` (or ``None``).
        """
        rows = [
            (
                key,
                kind,
                m.content_hash if m else None,
                m.epoch if m else None,
                m.to_bytes() if m is not None and kind == "sealed" else None,
            )
            for key, kind, m in items
        ]
        return self._append_rows(rows)

    def _append(
        self,
        key: PartitionKey,
        kind: ChangeKind,
        content_hash: str | None,
        epoch: int | None,
        manifest: bytes | None,
    ) -> int:
        return self._append_rows([(key, kind, content_hash, epoch, manifest)])

    def _append_rows(
        self,
        rows: list[tuple[PartitionKey, ChangeKind, str | None, int | None, bytes | None]],
    ) -> int:
        for key, *_ in rows:
            if key.tier not in ACTIVE_PASSIVE_TIERS:
                raise StorageError(f"the change feed covers warm and cold, not {key.tier}")
        now = format_rfc3339(datetime.now(UTC))
        position = 0
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for key, kind, content_hash, epoch, manifest in rows:
                        cursor = db.execute(
                            "INSERT INTO changes (tier, partition, kind, content_hash, epoch, "
                            "manifest, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (key.tier, key.relpath, kind, content_hash, epoch, manifest, now),
                        )
                        position = int(cursor.lastrowid or 0)
                        if kind == "sealed" and content_hash is not None and epoch is not None:
                            self._index(db, key, content_hash, epoch)
                        elif kind in ("superseded", "lost"):
                            self._unindex(db, key)
                    pruned = int(
                        db.execute("SELECT value FROM meta WHERE key='pruned_through'").fetchone()[
                            0
                        ]
                    )
                    # Prune in batches of a tenth of the retention: amortised, and
                    # whichever process appends (daemon, CLI) keeps the bound.
                    if position - pruned > self.retention + self.retention // 10:
                        self._prune(db)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(f"cannot append to the change feed {self.path}: {exc}") from exc
        return position

    def import_index(self, tier: Tier, rows: Iterable[tuple[str, str, int]]) -> int:
        """Add committed partitions to the index in bulk, without feed entries; return how many.

        Each row is ``(partition path, content hash, epoch)`` of a partition
        that is sealed and complete on disk; every path is checked against the
        layout (the series and date through :func:`parse_partition_path`, once
        per series and day). The result is what a root whose older feed entries
        were pruned looks like: the index and day digests hold every partition,
        the feed only what came after. Used to build large synthetic roots fast
        (``bench/replication.py``); the scrub checks the imported rows against
        the disk like any others.

        Error handling: :class:`StorageError` when a path breaks the layout,
        when a partition is held already, or when SQLite fails; nothing is
        imported then (one transaction).
        """
        if tier not in ACTIVE_PASSIVE_TIERS:
            raise StorageError(f"the change feed covers warm and cold, not {tier}")
        added = 0
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    days: dict[str, tuple[int, int]] = {}
                    batch: list[tuple[str, str, str, int, str, int]] = []

                    def flush() -> int:
                        before = db.total_changes
                        db.executemany(
                            "INSERT OR IGNORE INTO current VALUES (?, ?, ?, ?, ?, ?)", batch
                        )
                        if db.total_changes - before != len(batch):
                            # Some were held already: all or nothing, see the docstring.
                            raise _AlreadyHeld
                        for _, path, day, _, content_hash, _ in batch:
                            count, digest = days.get(day, (0, 0))
                            days[day] = (count + 1, digest ^ pair_digest(path, content_hash))
                        n = len(batch)
                        batch.clear()
                        return n

                    days_of: dict[str, PartitionKey] = {}
                    for path, content_hash, epoch in rows:
                        head, _, last = path.rpartition("/")
                        hour = -1
                        if tier in HOURLY_TIERS:
                            match = _HOUR_SEGMENT.fullmatch(last)
                            if match is None or int(match.group(1)) > 23:
                                raise StorageError(f"not a {tier} partition path: {path!r}")
                            hour = int(match.group(1))
                        else:
                            head = path
                        key = days_of.get(head)
                        if key is None:
                            key = days_of[head] = parse_partition_path(
                                tier, path if tier not in HOURLY_TIERS else f"{head}/hour=00"
                            )
                        batch.append(
                            (tier, path, key.start.date().isoformat(), hour, content_hash, epoch)
                        )
                        if len(batch) >= 10_000:
                            added += flush()
                    added += flush()
                    for day, (count, digest) in days.items():
                        self._fold_day(db, tier, day, digest, count)
                    db.execute("COMMIT")
                except _AlreadyHeld:
                    db.execute("ROLLBACK")
                    raise StorageError(
                        "import_index adds partitions the index does not hold yet; "
                        "some were held already (run the scrub instead)"
                    ) from None
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(f"cannot import into the index {self.path}: {exc}") from exc
        return added

    def _index(
        self, db: sqlite3.Connection, key: PartitionKey, content_hash: str, epoch: int
    ) -> None:
        path = key.relpath
        day = key.start.date().isoformat()
        row = db.execute(
            "SELECT content_hash FROM current WHERE tier=? AND partition=?", (key.tier, path)
        ).fetchone()
        delta = pair_digest(path, content_hash)
        added = 1
        if row is not None:
            if row[0] == content_hash:
                db.execute(
                    "UPDATE current SET epoch=? WHERE tier=? AND partition=?",
                    (epoch, key.tier, path),
                )
                return
            delta ^= pair_digest(path, str(row[0]))
            added = 0
        db.execute(
            "INSERT OR REPLACE INTO current VALUES (?, ?, ?, ?, ?, ?)",
            (key.tier, path, day, key.hour if key.hour is not None else -1, content_hash, epoch),
        )
        self._fold_day(db, key.tier, day, delta, added)

    def _unindex(self, db: sqlite3.Connection, key: PartitionKey) -> None:
        path = key.relpath
        row = db.execute(
            "SELECT content_hash, day FROM current WHERE tier=? AND partition=?", (key.tier, path)
        ).fetchone()
        if row is None:
            return
        db.execute("DELETE FROM current WHERE tier=? AND partition=?", (key.tier, path))
        self._fold_day(db, key.tier, str(row[1]), pair_digest(path, str(row[0])), -1)

    @staticmethod
    def _fold_day(db: sqlite3.Connection, tier: str, day: str, delta: int, added: int) -> None:
        row = db.execute(
            "SELECT count, digest FROM days WHERE tier=? AND day=?", (tier, day)
        ).fetchone()
        count, digest = (int(row[0]), int(str(row[1]), 16)) if row is not None else (0, 0)
        count += added
        digest ^= delta
        if count <= 0:
            db.execute("DELETE FROM days WHERE tier=? AND day=?", (tier, day))
        else:
            db.execute(
                "INSERT OR REPLACE INTO days VALUES (?, ?, ?, ?)",
                (tier, day, count, f"{digest:032x}"),
            )

    def _prune(self, db: sqlite3.Connection) -> None:
        head = int(db.execute("SELECT COALESCE(MAX(position), 0) FROM changes").fetchone()[0])
        cutoff = head - self.retention
        if cutoff <= 0:
            return
        db.execute("DELETE FROM changes WHERE position <= ?", (cutoff,))
        db.execute(
            "UPDATE meta SET value=? WHERE key='pruned_through' AND CAST(value AS INTEGER) < ?",
            (str(cutoff), cutoff),
        )

    def prune(self) -> None:
        """Drop entries older than the newest ``retention`` (appends do it as they go)."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                self._prune(db)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot prune the change feed {self.path}: {exc}") from exc

    # --- reading -------------------------------------------------------------------

    def head(self) -> int:
        """The newest position (0 for an empty feed)."""
        with self._lock:
            row = self._conn().execute("SELECT seq FROM sqlite_sequence WHERE name='changes'")
            found = row.fetchone()
        return int(found[0]) if found is not None else 0

    def read(self, tier: Tier, *, after: int, limit: int, feed_id: str | None = None) -> FeedPage:
        """Up to ``limit`` entries of ``tier`` with a position ``> after``, oldest first.

        Error handling: :class:`ResyncNeededError` when ``feed_id`` names
        another incarnation, when ``after`` lies beyond the head (a feed
        restored from an older backup), or when entries after ``after`` were
        pruned already.
        """
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN")
                try:
                    found = db.execute(
                        "SELECT seq FROM sqlite_sequence WHERE name='changes'"
                    ).fetchone()
                    head = int(found[0]) if found is not None else 0
                    pruned = int(
                        db.execute("SELECT value FROM meta WHERE key='pruned_through'").fetchone()[
                            0
                        ]
                    )
                    rows = db.execute(
                        "SELECT position, tier, partition, kind, content_hash, epoch, manifest, "
                        "recorded_at FROM changes WHERE tier=? AND position>? "
                        "ORDER BY position LIMIT ?",
                        (tier, after, limit),
                    ).fetchall()
                finally:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read the change feed {self.path}: {exc}") from exc
            this_id = self._feed_id
        assert this_id is not None
        if feed_id is not None and feed_id != this_id:
            raise ResyncNeededError(
                f"position {after} belongs to feed {feed_id}; this feed is {this_id}"
            )
        if after > head:
            raise ResyncNeededError(
                f"position {after} is beyond this feed's head {head} (feed {this_id})"
            )
        if after < pruned:
            raise ResyncNeededError(
                f"entries after {after} were pruned (kept from {pruned + 1}, feed {this_id})"
            )
        changes = tuple(
            Change(
                position=int(r[0]),
                tier=r[1],
                partition=str(r[2]),
                kind=r[3],
                content_hash=r[4],
                epoch=r[5],
                manifest=bytes(r[6]) if r[6] is not None else None,
                recorded_at=str(r[7]),
            )
            for r in rows
        )
        return FeedPage(feed_id=this_id, head=head, oldest=pruned + 1, changes=changes)

    def day_digests(self, tier: Tier) -> dict[str, tuple[int, str]]:
        """``{day: (count, digest)}`` over every day this root holds of ``tier``."""
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT day, count, digest FROM days WHERE tier=?", (tier,))
                .fetchall()
            )
        return {str(r[0]): (int(r[1]), str(r[2])) for r in rows}

    def held(self, tier: Tier, day: str, hour: int | None = None) -> list[Held]:
        """The committed partitions of one day (or one hour of it), by partition path."""
        sql = "SELECT partition, content_hash, epoch FROM current WHERE tier=? AND day=?"
        params: tuple[object, ...] = (tier, day)
        if hour is not None:
            sql += " AND hour=?"
            params = (tier, day, hour)
        with self._lock:
            rows = self._conn().execute(sql + " ORDER BY partition", params).fetchall()
        return [Held(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    def hour_digests(self, tier: Tier, day: str) -> dict[int, tuple[int, str]]:
        """``{hour: (count, digest)}`` of one day (cold partitions carry hour -1)."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT hour, partition, content_hash FROM current WHERE tier=? AND day=?",
                    (tier, day),
                )
                .fetchall()
            )
        grouped: dict[int, list[tuple[str, str]]] = {}
        for hour, partition, content_hash in rows:
            grouped.setdefault(int(hour), []).append((str(partition), str(content_hash)))
        return {h: (len(p), fold(p)) for h, p in grouped.items()}

    def lookup(self, tier: Tier, partitions: Iterable[str]) -> dict[str, Held]:
        """What the index records for each of ``partitions`` (absent ones are left out)."""
        wanted = sorted(set(partitions))
        found: dict[str, Held] = {}
        with self._lock:
            db = self._conn()
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                # Only "?" placeholders are formatted in; values are bound.
                query = f"SELECT partition, content_hash, epoch FROM current WHERE tier=? AND partition IN ({marks})"  # noqa: S608, E501
                rows = db.execute(query, (tier, *chunk)).fetchall()
                found.update({str(r[0]): Held(str(r[0]), str(r[1]), int(r[2])) for r in rows})
        return found

    def held_days(self, tier: Tier) -> Iterator[str]:
        """Every day of ``tier`` the index holds something of, oldest first."""
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT day FROM days WHERE tier=? ORDER BY day", (tier,))
                .fetchall()
            )
        return (str(r[0]) for r in rows)


_FEEDS: dict[Path, ChangeFeed] = {}
_FEEDS_LOCK = threading.Lock()


def feed_for(root: Path) -> ChangeFeed:
    """The process-wide :class:`ChangeFeed` of ``root`` (created on first use)."""
    key = root.resolve()
    with _FEEDS_LOCK:
        feed = _FEEDS.get(key)
        if feed is None:
            feed = _FEEDS[key] = ChangeFeed(key)
        return feed


#: Under ``storage.root``: the index of what a tier's bucket holds, one feed per tier.
BUCKET_INDEX_DIR: Final = "_state/bucket_index"


def bucket_index(root: Path, tier: Tier) -> ChangeFeed:
    """The change feed indexing what ``tier``'s bucket holds (not this root's disk feed).

    Written by the bucket → bucket executor and by the disk → bucket worker;
    read by the links that mirror into the bucket and, for a tier held only in
    the bucket, by the feed and digest endpoints.
    """
    return feed_for(root / BUCKET_INDEX_DIR / tier)


def empty_digest() -> str:
    return _ZERO


def note_sealed(root: Path, manifest: Manifest) -> None:
    """Record a seal in ``root``'s feed; a failure is logged, never raised.

    The seal is on disk already when this runs (``_SUCCESS`` is the commit
    point, not the feed entry): refusing it now would not undo it. A missed
    entry is found by the next scrub, which compares the disk with the index
    and records what it finds ("sealed" or "lost").
    """
    if manifest.tier not in ACTIVE_PASSIVE_TIERS:
        return
    try:
        feed_for(root).record_sealed(manifest)
    except (StorageError, OSError) as exc:
        log.warning(
            "seal not recorded in the change feed", partition=str(manifest.key), error=str(exc)
        )


def note_removed(root: Path, key: PartitionKey, kind: ChangeKind, held: Manifest | None) -> None:
    """Record that a committed version left ``root`` (see :func:`note_sealed` on failures)."""
    if key.tier not in ACTIVE_PASSIVE_TIERS:
        return
    try:
        feed_for(root).record_removed(
            key, kind, held.content_hash if held else None, held.epoch if held else None
        )
    except (StorageError, OSError) as exc:
        log.warning("removal not recorded in the change feed", partition=str(key), error=str(exc))


def note_quarantined(root: Path, manifest: Manifest) -> None:
    """Record a refused, quarantined manifest (see :func:`note_sealed` on failures)."""
    try:
        feed_for(root).record_quarantined(manifest)
    except (StorageError, OSError) as exc:
        log.warning(
            "quarantine not recorded in the change feed",
            partition=str(manifest.key),
            error=str(exc),
        )
