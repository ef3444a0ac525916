"""Hot → warm sealing: closed windows of the hot journal become sealed warm partitions.

(Past the house's ~500 lines, mostly docstring: the round's steps and the
crash-safety invariants below are checked together; staging and the columnar
seal already live in ``hot/staging.py`` and ``hot/staged_seal.py``.)

Windows are ``hot.partition_length`` long (an hour by default; the demo uses
minutes) and aligned to the Unix epoch; a window is *closed* ``hot.seal_grace``
after its end. Only the region that is warm primary writes: each closed window
becomes ``part-<window start>.parquet`` in the contract layout (one file per
dataset, venue, symbol and hour), and the hour partition is (re-)sealed through
``storage.seal.seal_partition``. Records that reach the journal after their
window was sealed are *late*: the next round writes them to a
``late-fill-<round>.parquet`` file in their own hour partition, re-seals it and
counts them in ``cryptorun_hot_late_records_total`` — they are never dropped.

Streaming: the sealer reads each journal byte once. ``read_through`` (saved in
the state) is where the next round starts reading; rows of windows not sealed
yet are staged on disk batch by batch (``hot/staging.py``,
``{root}/_state/staging/<region>/``), and a closed window is sealed from its
staged files in columnar form (``hot/staged_seal.py``). Memory is therefore
one batch of decoded rows (``BATCH_ROWS``) plus the selection keys of one
partition's window, whatever the window length and the rate. Between window
closes a round runs every ``STAGE_INTERVAL`` seconds while the journal grows.
A scheduled round of the primary seals closed windows oldest first within
``SEAL_BUDGET`` seconds (at least one); a backlog is worked off by the rounds
that follow, one tick apart, each saving its progress.

A replica writes nothing; it treats a window as sealed once warm replication
has delivered, in every partition the window touches, a sealed manifest that
lists that window's own file (an hour sealed for an earlier window does not
count). A journal segment is deleted once it is read and every window its
records were staged for is sealed (``segment_windows`` in the state), so a
replica trims its journal window by window as replication covers it.

Crash-safety invariants (a kill at any point, then a restart, converges to the
content a run without the crash writes; docs/HOT_TIER.md, fail points in
``runtime/failpoints.py``):

1. The state file (``_state/hot/sealer.json``: sealed windows with the journal
   position each was sealed at, ``read_through``, ``segment_windows``,
   ``late_through``, ``late_intent``) is saved only after every staging and
   partition write of the round is complete, and journal segments and the
   staging of sealed windows are deleted only after that save. Whatever a
   crashed round did is therefore still described by the journal from
   ``read_through`` on plus the staged files before it, and the next round
   redoes it.
2. Every step is idempotent. A window's rows go to a file named by the window
   (``part-<start>``) and a data file's bytes are a pure function of its rows,
   so a redo replaces the file with a superset of the same rows (or leaves it
   alone when unchanged). A late fill first saves its file name as
   ``late_intent`` (write-ahead), and a redo writes that same name: no row is
   written twice (books have no id to deduplicate by), and trades are
   deduplicated against every file but that one, so a half-done late fill
   never hides its own rows.
3. A sealed partition is never changed under its ``_SUCCESS``: the marker is
   unlinked before a data file is added or replaced, and the partition is
   re-sealed after. A partition without ``_SUCCESS`` is always one a redo
   will seal, because the records that made it changed are still journaled.
4. A manifest's source list is derived from its files (each file carries its
   per-source summary in its Parquet metadata), never merged with the
   previous manifest, so re-sealing after a crash does not count rows twice.
5. The in-memory state moves only together with the saved state: a round
   that fails without a crash is redone in full as well.
6. No round runs while the region's warm role is not confirmed yet
   (``role_settled``; right after a start the file store has not compared
   epochs with the peers): a round run as replica passes late records on to
   the primary and marks as sealed every window the partitions show sealed,
   which a primary that is merely unconfirmed must not do with its own work.
7. A window's file is never rewritten once the window has left the state
   (kept for a week): a record for it that shows up later, with the window's
   file sealed on disk, is a late record like any other.
8. Staging is idempotent under redo: a staged file is durable before the
   position past its range is saved, it is named by the journal range it
   holds, and every staged file whose range starts at or after the saved
   ``read_through`` (a round that never saved) is removed before the next
   round stages anything. No staged row is ever counted twice. The position
   is saved only after the segments read are fsynced (a power loss never
   leaves the journal shorter than it), and a journal that ends before it
   fails the round loudly.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from cryptorun_daemon.errors import FencedError, StorageError
from cryptorun_daemon.hot import partition_writer as pw
from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.hot.durable import fsync_dir
from cryptorun_daemon.hot.journal import Journal, Segment
from cryptorun_daemon.hot.journal_columns import iter_chunks, stage_groups
from cryptorun_daemon.hot.record import record_parts
from cryptorun_daemon.hot.staged_seal import write_window_file
from cryptorun_daemon.hot.staging import StagingArea
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.failpoints import failpoint
from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.storage.layout import SUCCESS_MARKER
from cryptorun_daemon.storage.manifest import read_manifest
from cryptorun_daemon.timefmt import format_compact, format_rfc3339, utc_from_ns

log = structlog.get_logger("cryptorun.hot.sealer")
Position = tuple[int, int]  # (segment index, byte offset)
STATE_KEEP_NS = 7 * 86400 * 10**9
HOUR_NS = 3600 * 10**9  # warm partitions are hourly
# Rows decoded per staging batch: bounds the rows held as Python objects.
BATCH_ROWS = 20_000
# Between window closes a round runs (and stages) at most this often when the
# journal has grown; a window close or a role change starts one at once.
STAGE_INTERVAL = 5.0
# A primary's scheduled round starts sealing no further window once it has spent
# this long sealing (it always seals at least one); the rest follow in the next
# rounds, one tick apart. A round is all-or-nothing (invariant 5) and any of its
# seals is refused while the etcd lease is short of the safety margin, so a new
# primary with a long backlog that seals it in one round can lose all of the
# round to one late heartbeat, redo it from scratch, and never finish on a
# loaded host (chaos soak, seed 42). Short rounds keep their progress.
SEAL_BUDGET = 2.0

# Journal bytes one round reads at most. A sealer that fell behind catches up in
# rounds of this size, each saving its position (so a stop or a crash loses at most
# one round's work, and a cancelled round ends within one chunk), instead of one
# round over the whole backlog; windows are sealed only by a round that read to
# the journal's end.
ROUND_BYTES = 128 << 20


class _RoundAbortedError(Exception):
    """Raised in the worker thread when the round's task was cancelled (shutdown)."""


@dataclass
class RoundResult:
    """What one sealing round did (also the sealer's ``last_round`` status)."""

    at_ns: int
    primary: bool
    windows_sealed: list[int] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    rows: int = 0
    late_rows: int = 0
    rows_staged: int = 0
    # Closed windows left for the next round (the primary's seal budget ran out).
    backlog: bool = False
    read_through: Position = (0, 0)
    deletable_segments: list[int] = field(default_factory=list)
    caught_up: bool = True  # read to the journal's end (else: ROUND_BYTES reached)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at_ns),
            "primary": self.primary,
            "windows_sealed": [_iso(w) for w in self.windows_sealed],
            "partitions": self.partitions,
            "rows": self.rows,
            "late_rows": self.late_rows,
            "rows_staged": self.rows_staged,
            "read_through": list(self.read_through),
            "segments_deleted": self.deletable_segments,
            "caught_up": self.caught_up,
            "backlog": self.backlog,
        }


class HotSealer:
    """Schedules sealing rounds and keeps the sealed-window state on disk.

    Error handling: a failing round (disk full, unreadable segment) is
    logged, kept in ``last_error`` and retried at the next tick; nothing is
    deleted from the journal unless the round succeeded. Resource handling:
    Parquet and hashing run in a worker thread; state is written atomically.
    """

    def __init__(
        self,
        *,
        region: str,
        root: Path,
        journal: Journal,
        authority: SourceAuthority,
        partition_length: float,
        seal_grace: float,
        is_warm_primary: Callable[[], bool],
        epoch: Callable[[], int],
        metrics: Metrics,
        now_ns: Callable[[], int] = time.time_ns,
        check_interval: float = 1.0,
        role_settled: Callable[[], bool] = lambda: True,
        seal_budget: float = SEAL_BUDGET,
        validate: Callable[[Path, str, str], Any] | None = None,
    ) -> None:
        self.region = region
        # The same row checks replicas run on every pulled file (sidecar, counts): without
        # them the primary would serve rows that every replica's readers drop.
        self.validate = validate
        self.root = root
        self.journal = journal
        self.authority = authority
        self.length_ns = int(partition_length * 1e9)
        self.grace_ns = int(seal_grace * 1e9)
        self.is_warm_primary = is_warm_primary
        self.role_settled = role_settled
        self.epoch = epoch
        self.metrics = metrics
        self.now_ns = now_ns
        self.check_interval = check_interval
        self.seal_budget = seal_budget
        self.state_path = root / "_state" / "hot" / "sealer.json"
        self.staging = StagingArea(root, region)
        self.sealed: dict[int, Position] = {}
        # Records at or before this position in a window that is sealed were
        # handled (sealed or late-filled); only a state written before the
        # streaming sealer has it behind ``read_through``.
        self.late_through: Position = (0, 0)
        # Every journal byte before this position has been read: staged, or
        # late-filled, or found already handled. Reads start here.
        self.read_through: Position = (0, 0)
        # Segment index -> the windows its staged records belong to; a segment
        # is deleted once it is read and all of them are sealed.
        self.segment_windows: dict[int, set[int]] = {}
        # The late-fill file a round has committed to (saved before it is written).
        self.late_intent: str | None = None
        self.late_total = 0
        self.rounds = 0
        self.rows_staged_total = 0  # since start: how fast staging keeps up (bench/hot_soak.py)
        self.last_round: RoundResult | None = None
        self.last_error: str | None = None
        self._late = metrics.hot_late_records_total.labels(region=region)
        # Staged files past ``read_through`` may exist (a crash, a failed round):
        # they are removed before the next round stages anything.
        self._staging_dirty = True
        # Set when the task awaiting a round is cancelled: the worker thread stops at
        # its next batch (asyncio.run waits for running threads at exit, so a round
        # left to finish on its own would hold a stopping daemon for its whole length).
        self._abort = threading.Event()
        # One round's thread at a time, also when a cancelled one is still winding down.
        self._round_lock = threading.Lock()
        self._load()

    # ----------------------------------------------------------------- state
    def _load(self) -> None:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        self.sealed = {int(k): (int(v[0]), int(v[1])) for k, v in data["sealed"].items()}
        self.late_through = (int(data["late_through"][0]), int(data["late_through"][1]))
        # A state from before the streaming sealer has no read position: its
        # open windows were never staged, so the journal is read from its start
        # (records of sealed windows up to ``late_through`` are skipped).
        read = data.get("read_through", [0, 0])
        self.read_through = (int(read[0]), int(read[1]))
        self.segment_windows = {
            int(k): {int(w) for w in v} for k, v in data.get("segment_windows", {}).items()
        }
        self.late_total = int(data.get("late_total", 0))
        intent = data.get("late_intent")
        self.late_intent = str(intent) if isinstance(intent, str) else None

    def _save(
        self,
        now: int,
        late_total: int,
        sealed: dict[int, Position],
        read_through: Position,
        *,
        segment_windows: dict[int, set[int]],
        late_intent: str | None = None,
    ) -> None:
        kept = {w: p for w, p in sealed.items() if w >= now - STATE_KEEP_NS}
        sealed.clear()
        sealed.update(kept)
        body: dict[str, Any] = {
            "sealed": {str(w): list(p) for w, p in sorted(kept.items())},
            "late_through": list(read_through),
            "read_through": list(read_through),
            "segment_windows": {
                str(s): sorted(ws) for s, ws in sorted(segment_windows.items()) if ws
            },
            "late_total": late_total,
        }
        if late_intent is not None:
            body["late_intent"] = late_intent
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.state_path, json.dumps(body, indent=1).encode())

    def closed_limit(self, now: int) -> int:
        """Windows ending at or before this instant are closed."""
        return now - self.grace_ns

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        """Run a round whenever another window has closed or the role changed (and at start),
        and every ``STAGE_INTERVAL`` while the journal grows (staging its new records).

        Waits while ``role_settled()`` is false (invariant 6 in the module docstring).

        Error handling: see the class docstring. Resource handling: owns no
        open files between rounds.
        """
        done_through: tuple[int, bool] | None = None
        last_start = 0.0
        while True:
            now = self.now_ns()
            # A change of role counts too: a region that became primary after
            # a round it ran as replica must not wait for the next window.
            due = (self.closed_limit(now) // self.length_ns, self.is_warm_primary())
            grown = (
                time.monotonic() - last_start >= STAGE_INTERVAL
                and self.journal.position() != self.read_through
            )
            if (due != done_through or grown) and self.role_settled():
                last_start = time.monotonic()
                try:
                    result = await self.round(now, seal_budget=self.seal_budget)
                    # Not read to the journal's end (ROUND_BYTES) or closed windows
                    # left by the seal budget: the next tick goes on.
                    done_through = due if result.caught_up and not result.backlog else None
                    self.last_error = None
                except Exception as exc:  # retried next tick; the journal is untouched
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("hot sealing round failed", exc_info=True)
            await asyncio.sleep(self.check_interval)

    async def round(
        self, now: int | None = None, *, seal_budget: float | None = None
    ) -> RoundResult:
        """One round: stage the journal's new records, seal closed windows, late-fill.

        With ``seal_budget`` (seconds; :meth:`run` passes ``self.seal_budget``) a
        primary seals closed windows oldest first and starts no further one once
        sealing has taken that long; ``backlog`` in the result says windows are
        left. Without it, every closed window is sealed.
        """
        now = self.now_ns() if now is None else now
        position = self.journal.position()
        segments = self.journal.segments()
        primary, epoch = self.is_warm_primary(), self.epoch()
        try:
            result = await asyncio.to_thread(
                self._round, now, position, segments, primary, epoch, seal_budget=seal_budget
            )
        except asyncio.CancelledError:
            # Like a crash: nothing of the round is saved, the next round redoes it
            # (invariants 1 and 8); the thread stops at its next batch boundary.
            self._abort.set()
            self._staging_dirty = True
            raise
        except FencedError:
            # The storage fence refused the seal (primacy lost between the role
            # check and the write): counted, and the round is retried as usual.
            self.metrics.fenced_total.labels(tier="warm", operation="seal").inc()
            self._staging_dirty = True
            raise
        except BaseException:
            self._staging_dirty = True
            raise
        for index in result.deletable_segments:
            self.journal.delete_segment(index)
        self.late_total += result.late_rows
        self._late.inc(result.late_rows)
        self.rounds += 1
        self.rows_staged_total += result.rows_staged
        self.last_round = result
        if result.windows_sealed or result.late_rows:
            log.info("hot sealing round", **result.to_json())
        return result

    # ---------------------------------------------------------------- blocking
    def _round(
        self,
        now: int,
        position: Position,
        segments: list[Segment],
        primary: bool,
        epoch: int,
        *,
        seal_budget: float | None = None,
    ) -> RoundResult:
        with self._round_lock:
            self._abort.clear()
            return self._round_locked(
                now, position, segments, primary, epoch, seal_budget=seal_budget
            )

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise _RoundAbortedError("sealing round cancelled")

    def _round_locked(
        self,
        now: int,
        position: Position,
        segments: list[Segment],
        primary: bool,
        epoch: int,
        *,
        seal_budget: float | None = None,
    ) -> RoundResult:
        result = RoundResult(at_ns=now, primary=primary, read_through=position)
        if position < self.read_through:
            # Reading on would skip every record appended until the journal grows
            # past the old position: say so instead of sealing nothing in silence.
            raise StorageError(
                f"the hot journal ends at {list(position)}, before the sealer's read "
                f"position {list(self.read_through)}: it was replaced or lost bytes"
            )
        if self._staging_dirty:
            self.staging.truncate(self.read_through)
            self._staging_dirty = False
        # Work on copies: the in-memory state moves only with the saved state, so
        # a round that fails halfway is redone in full by the next one.
        segment_windows = {s: set(ws) for s, ws in self.segment_windows.items()}
        late, reached = self._read_new(now, position, segments, segment_windows, result)
        # A round that stopped at ROUND_BYTES continues from there next time; it
        # seals nothing, since the unread bytes may hold rows of a closed window.
        result.caught_up = reached == position
        position = result.read_through = reached
        # The position is saved only over journal bytes on stable storage, so that
        # after a power loss the journal still holds everything before it and new
        # records are appended after it, never inside the range already read.
        _fsync_segments(s.path for s in segments if self.read_through[0] <= s.index)
        sealed = dict(self.sealed)
        limit = self.closed_limit(now)
        sealing_from = time.monotonic()
        for window in self.staging.windows() if result.caught_up else ():
            if window in sealed or window + self.length_ns > limit:
                continue
            self._check_abort()
            if (
                primary
                and seal_budget is not None
                and result.windows_sealed
                and time.monotonic() - sealing_from >= seal_budget
            ):
                result.backlog = True  # oldest first: the rest are newer
                break
            partitions = self.staging.partitions(window)
            if primary:
                self._seal_window(window, partitions, epoch, result)
            elif not self._replicated(window, list(partitions)):
                continue  # a replica keeps its copy until warm replication delivered
            sealed[window] = position
            result.windows_sealed.append(window)
        if primary and late:
            if self.late_intent is None:
                # Write-ahead: the late file's name is fixed before any byte of
                # it is written, so a redo after a crash replaces that file
                # instead of adding a second copy of its rows.
                intent = f"{pw.LATE_FILL_PREFIX}{_compact(now)}-{now % 10**9:09d}.parquet"
                self._save(
                    now,
                    self.late_total,
                    dict(self.sealed),
                    self.read_through,
                    segment_windows=self.segment_windows,
                    late_intent=intent,
                )
                self.late_intent = intent
                failpoint("late.after_intent")
            self._late_fill(late, self.late_intent, epoch, result)
            failpoint("late.after_seal")
        # ``late_total`` and the counter move together on the event loop (in
        # ``round``), so nobody observes one ahead of the other.
        present = {s.index for s in segments}
        segment_windows = {s: ws for s, ws in segment_windows.items() if s in present}
        self._save(
            now,
            self.late_total + result.late_rows,
            sealed,
            position,
            segment_windows=segment_windows,
        )
        self.sealed, self.late_through, self.late_intent = sealed, position, None
        self.read_through, self.segment_windows = position, segment_windows
        failpoint("sealer.after_state")
        if self.staging.drop(w for w in self.staging.windows() if w in sealed):
            failpoint("staging.after_drop")
        forgotten = now - STATE_KEEP_NS
        result.deletable_segments = [
            s.index
            for s in segments
            if s.index < position[0]
            and all(w in sealed or w < forgotten for w in segment_windows.get(s.index, ()))
        ]
        return result

    def _read_new(
        self,
        now: int,
        position: Position,
        segments: list[Segment],
        segment_windows: dict[int, set[int]],
        result: RoundResult,
    ) -> tuple[list[pw.Row], Position]:
        """Read the journal from ``read_through`` towards ``position``; stage, return late
        rows and the position reached (``position``, or earlier once ``ROUND_BYTES``
        are read).

        Rows of windows not sealed yet are staged in batches of ``BATCH_ROWS``
        (fail point ``stage.after_batch`` after each); rows of sealed windows
        not handled before are late and returned (late rows are rare: they are
        held in memory until the round's late fill).
        """
        length, start = self.length_ns, self.read_through
        forgotten = now - STATE_KEEP_NS  # windows before this are dropped from the state
        on_disk: dict[Path, frozenset[str]] = {}
        late: list[pw.Row] = []
        batch: dict[tuple[int, Path], list[pw.Row]] = defaultdict(list)
        directories: dict[tuple[str, str, str, int], Path] = {}
        batch_rows = 0
        batch_start = here = start

        def partition(dataset: str, venue: str, symbol: str, ts: int) -> Path:
            # Building a checked path per row costs more than decoding it.
            key = (dataset, venue, symbol, ts // HOUR_NS)
            directory = directories.get(key)
            if directory is None:
                directory = directories[key] = pw.partition_dir(
                    self.root, dataset, venue, symbol, ts
                )
            return directory

        def is_late(window: int) -> bool:
            # Any window the row path would look at record by record.
            return window in self.sealed or window < forgotten

        read = 0
        for segment in segments:
            if segment.index < start[0] or segment.index > position[0]:
                continue
            if read >= ROUND_BYTES:
                break
            begin = start[1] if segment.index == start[0] else 0
            stop = position[1] if segment.index == position[0] else None
            for chunk_start, chunk_end, data in iter_chunks(segment.path, begin, stop):
                if read >= ROUND_BYTES:
                    break
                read += len(data)
                self._check_abort()
                fast = stage_groups(
                    data, length_ns=length, partition_dir=partition, is_late=is_late
                )
                if fast is not None:
                    # The whole chunk in one staged batch, after what the row path holds.
                    if batch:
                        result.rows_staged += self.staging.stage(batch, batch_start, here)
                        failpoint("stage.after_batch")
                        batch, batch_rows = defaultdict(list), 0
                    here = (segment.index, chunk_end)
                    if fast.groups:
                        result.rows_staged += self.staging.stage_tables(
                            fast.groups, (segment.index, chunk_start), here
                        )
                        failpoint("stage.after_batch")
                        segment_windows.setdefault(segment.index, set()).update(fast.windows)
                    batch_start = here
                    continue
                offset = chunk_start
                for line in data.split(b"\n")[:-1]:
                    offset += len(line) + 1
                    here = (segment.index, offset)
                    if line.startswith(b'{"ctl"'):
                        continue
                    row = pw.Row(*record_parts(line))
                    ts = row.ts
                    window = ts // length * length
                    if window in self.sealed:
                        if here > self.late_through:
                            late.append(row)
                    elif window < forgotten and self._window_on_disk(row, window, on_disk):
                        # Older than the state remembers, but sealed on disk: never
                        # rewrite its window file (the rows already in it may have
                        # left the journal); a record not yet handled is late.
                        if here > self.late_through:
                            late.append(row)
                    else:
                        directory = partition(row.dataset, row.venue, row.symbol, ts)
                        batch[(window, directory)].append(row)
                        segment_windows.setdefault(segment.index, set()).add(window)
                        batch_rows += 1
                        if batch_rows >= BATCH_ROWS:
                            result.rows_staged += self.staging.stage(batch, batch_start, here)
                            failpoint("stage.after_batch")
                            self._check_abort()
                            batch, batch_rows, batch_start = defaultdict(list), 0, here
        if batch:
            result.rows_staged += self.staging.stage(batch, batch_start, here)
            failpoint("stage.after_batch")
        return late, (position if read < ROUND_BYTES else here)

    def _groups(self, rows: list[pw.Row]) -> dict[Path, list[pw.Row]]:
        groups: dict[Path, list[pw.Row]] = defaultdict(list)
        for row in rows:
            directory = pw.partition_dir(self.root, row.dataset, row.venue, row.symbol, row.ts)
            groups[directory].append(row)
        return groups

    def _window_on_disk(self, row: pw.Row, window: int, cache: dict[Path, frozenset[str]]) -> bool:
        """Whether ``row``'s partition is sealed with ``window``'s file in its manifest."""
        directory = pw.partition_dir(self.root, row.dataset, row.venue, row.symbol, row.ts)
        files = cache.get(directory)
        if files is None:
            files = frozenset()
            if (directory / SUCCESS_MARKER).is_file():
                try:
                    files = frozenset(f.name for f in read_manifest(directory).files)
                except StorageError:
                    pass
            cache[directory] = files
        return _window_file(window) in files

    def _replicated(self, window: int, partitions: list[Path]) -> bool:
        """Whether the primary's seal of ``window`` reached every partition its rows touch.

        Each window is checked on its own: with windows shorter than an hour,
        an hour partition sealed for an earlier window says nothing about this
        one, so the sealed manifest must list this window's file.
        """
        name = _window_file(window)
        for directory in partitions:
            if not (directory / SUCCESS_MARKER).is_file():
                return False
            try:
                manifest = read_manifest(directory)
            except StorageError:
                return False
            if manifest.file(name) is None:
                return False
        return True

    def _seal_window(
        self, window: int, partitions: dict[Path, list[Path]], epoch: int, result: RoundResult
    ) -> None:
        name = _window_file(window)
        for directory, files in sorted(partitions.items()):
            dataset = directory.relative_to(self.root).parts[1]
            written = write_window_file(
                directory,
                name,
                files,
                dataset=dataset,
                timeline=self.authority.timeline,
                rank=self.authority.rank,
            )
            if not written:
                continue
            result.rows += written
            failpoint("seal.after_data")
            self._validate(directory / name, dataset)
            pw.seal(directory, writer_region=self.region, epoch=epoch)
            result.partitions.append(str(directory.relative_to(self.root)))

    def _validate(self, path: Path, dataset: str) -> None:
        """Row findings of a file about to be sealed go to its sidecar, as at every replica.

        Error handling: a file the validator moved to quarantine (it cannot be
        judged row by row: a bug in our own writer) fails the round with
        :class:`StorageError`; nothing is sealed without it and the journal is kept.
        """
        if self.validate is None:
            return
        verdict = self.validate(path, dataset, "warm")
        if not verdict.ok:
            raise StorageError(f"the sealer's own file {path} failed validation: {verdict.detail}")

    def _late_fill(self, rows: list[pw.Row], name: str, epoch: int, result: RoundResult) -> None:
        for directory, group in sorted(self._groups(rows).items()):
            fresh = group
            if group[0].dataset == "trade" and directory.is_dir():
                # Not against ``name`` itself: after a crash it may hold these very rows.
                known = pw.existing_trade_ids(directory, exclude={name})
                fresh = [r for r in group if r.fields.get("trade_id") not in known]
            chosen = pw.select_rows(fresh, self.authority.source_at, self.authority.rank)
            if not chosen:
                continue
            pw.write_file(directory, name, chosen)
            failpoint("late.after_data")
            self._validate(directory / name, group[0].dataset)
            pw.seal(directory, writer_region=self.region, epoch=epoch)
            result.late_rows += len(chosen)
            result.partitions.append(str(directory.relative_to(self.root)))

    def status(self) -> dict[str, Any]:
        return {
            "partition_length_seconds": self.length_ns / 1e9,
            "seal_grace_seconds": self.grace_ns / 1e9,
            "primary": self.is_warm_primary(),
            "role_settled": self.role_settled(),
            "rounds": self.rounds,
            "rows_staged": self.rows_staged_total,
            "windows_sealed": len(self.sealed),
            "read_through": list(self.read_through),
            "staged_windows": [_iso(w) for w in self.staging.windows()],
            "last_sealed_window": _iso(max(self.sealed)) if self.sealed else None,
            "late_records": self.late_total,
            "last_round": self.last_round.to_json() if self.last_round else None,
            "last_error": self.last_error,
        }


def _fsync_segments(paths: Iterable[Path]) -> None:
    """fsync journal segment files (and their directory) through descriptors of our own.

    An fsync covers the file, whichever descriptor wrote its pages, and never
    touches the journal's own bookkeeping of what it has synced.
    """
    directory = None
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        directory = path.parent
    if directory is not None:
        fsync_dir(directory)


def _iso(ns: int) -> str:
    return format_rfc3339(utc_from_ns(ns), precision="seconds")


def _window_file(window: int) -> str:
    """The data file a window's rows are sealed in (one per partition it touches)."""
    return f"part-{_compact(window)}.parquet"


def _compact(ns: int) -> str:
    return format_compact(utc_from_ns(ns), precision="seconds")
