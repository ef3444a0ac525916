"""The segmented, append-only on-disk journal of the hot log.

(Longer than the house's ~500 lines on purpose: the write buffer, the fsync
bookkeeping and the failure/retry state share invariants that are easier to
check in one place; recovery and repair already live in ``journal_recovery``
and ``journal_repair``.)

Every record the region applies (local or mirrored) is one line in the active
segment file ``{index:010d}.jsonl``; control lines record replication-id
changes, unfillable gaps and clean shutdowns.

Durability, step by step:

1. An append goes into this journal's **user-space buffer** (``buffer_bytes``,
   64 KiB by default). Nothing else has it yet: SIGKILL loses it.
2. The buffer is written to the file (``os.write``, the page cache) when it is
   full, when the syncer runs, and before anyone reads the segments back.
   A power loss still loses what is only in the page cache.
3. The syncer ``fsync``s every ``fsync_interval`` seconds or after
   ``fsync_records`` records, whichever comes first, and the journal directory
   after a segment roll. Only then is a record durable.

A crash therefore loses at most the buffer plus the unsynced window
(docs/HOT_TIER.md).

A failed write (ENOSPC, EIO) never leaves half a line in a segment: the file
is cut back to the last whole line, the bytes stay in the buffer, and the
journal refuses appends (:attr:`failure`, :class:`JournalUnavailableError`)
until :meth:`retry` — which the syncer calls periodically — writes them.
A failed ``fsync`` is never followed by trusting a later successful one:
the kernel may have dropped the dirty pages, so every byte written since the
last good fsync (kept in memory until then) is written again at its offset
before the next fsync counts.

Segments are rolled at ``segment_bytes`` and deleted only by the sealer, after
every record in them is inside a sealed warm partition. Until then the mirror
server can read the local origin's records back from them
(``journal_reader``), through the sparse index this journal keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import structlog

from cryptorun_daemon.errors import JournalUnavailableError, StorageError
from cryptorun_daemon.hot.durable import fsync_all, make_durable_dirs, rewrite_and_fsync
from cryptorun_daemon.hot.journal_reader import LocalIndex, ReadPosition, complete_lines
from cryptorun_daemon.hot.journal_recovery import OriginState, Recovery, read_journal
from cryptorun_daemon.hot.journal_repair import SUFFIX, acquire_lock, segment_path
from cryptorun_daemon.hot.record import encode_control
from cryptorun_daemon.runtime.failpoints import failpoint

log = structlog.get_logger("cryptorun.hot.journal")
__all__ = ["SUFFIX", "Journal", "OriginState", "Recovery", "Segment", "iter_lines"]
WRITE_BUFFER_BYTES = 64 << 10
# Bytes written since the last good fsync are kept so a failed fsync can be
# redone; past this many, appends wait (refused) until a sync catches up.
UNSYNCED_LIMIT_BYTES = 64 << 20
# How often a failed journal tries again (also bounded below by fsync_interval).
RETRY_INTERVAL = 0.5


@dataclass(frozen=True)
class Segment:
    index: int
    path: Path
    size: int
    active: bool


class Journal:
    """Owns the segment files of one region's hot journal.

    Resource handling: :meth:`recover` takes the journal's lock file and opens
    the active segment; :meth:`close` writes the clean-close marker, syncs and
    closes every file and the lock. Between the two, only the event-loop thread
    writes; ``fsync`` runs in a worker thread so a slow disk never stalls the loop.

    Invariants: ``_size`` = bytes of the active segment including ``_pending``
    (where the next line will start); ``_sizes[index]`` = bytes actually in each
    file; ``_unsynced_chunks`` = ``(segment, offset, bytes)`` written since the
    last good fsync, in order.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int,
        fsync_interval: float,
        fsync_records: int,
        gaps_kept: int = 100,
        buffer_bytes: int = WRITE_BUFFER_BYTES,
        unsynced_limit_bytes: int = UNSYNCED_LIMIT_BYTES,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.fsync_records = fsync_records
        self.buffer_bytes = buffer_bytes
        self.unsynced_limit_bytes = unsynced_limit_bytes
        self._gaps_kept = gaps_kept
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._pending = bytearray()
        self._index = 0
        self._size = 0
        self._sizes: dict[int, int] = {}
        self._retired: list[tuple[int, int]] = []  # (segment, fd) rolled but not yet fsynced
        self._unsynced = 0
        self._unsynced_chunks: list[tuple[int, int, bytes]] = []
        self._unsynced_bytes = 0
        self._dir_dirty = False
        self._sync_wanted = asyncio.Event()
        # Set while writes are refused: the first error's text ("write: [Errno 28] ...").
        self.failure: str | None = None
        # A failed fsync: the unsynced chunks must be written again before an fsync counts.
        self._rewrite_needed = False
        self._episode = False
        self._opened = 0  # bumped by close(): a sync that spans a close is void
        self.failures = 0
        # Called after a roll: control lines that make the new segment self-describing
        # (current replid and seq of every origin), so deleting old segments never
        # loses the replication ids recovery needs.
        self.on_roll: Callable[[], list[dict[str, Any]]] | None = None
        self.synced_records = 0
        self.written_records = 0
        # Bytes ever appended, and how many of them an fsync is known to cover:
        # ``durable_bytes >= mark`` for an ``appended_bytes`` taken right after an
        # append means that append is on disk (see ``HotLog._reserve_through``).
        self.appended_bytes = 0
        self.durable_bytes = 0
        # Where the local origin's records are, so the mirror server can serve
        # subscribers that fell behind the replay buffer from disk.
        self.local_origin: str | None = None
        self.local_index = LocalIndex()
        self._local_replid: str | None = None

    # ---------------------------------------------------------------- recovery
    def recover(self, *, local_origin: str, tail_records: int, tail_bytes: int) -> Recovery:
        """Read every segment, truncate a torn tail and open the journal for appends.

        ``tail`` gets the local origin's newest records under its current replid,
        within ``tail_records``/``tail_bytes`` (the replay buffer's limits).

        Error handling: a torn or unparsable *last* line of the newest segment
        is the crash signature and is truncated (counted in ``torn_bytes``);
        a bad line anywhere else raises :class:`JournalDamagedError` naming the
        segment and offset (``cryptorun journal salvage`` repairs it), because
        silently skipping it would lose data. :class:`StorageError` when another
        process holds the journal.
        """
        make_durable_dirs(self.directory)
        if self._lock_fd is None:
            self._lock_fd = acquire_lock(self.directory)
        self.local_origin = local_origin
        try:
            result = read_journal(
                self.directory,
                local_origin=local_origin,
                local_index=self.local_index,
                tail_records=tail_records,
                tail_bytes=tail_bytes,
                gaps_kept=self._gaps_kept,
            )
        except BaseException:
            self._release_lock()
            raise
        self._local_replid = result.local_replid
        self._sizes = dict(result.sizes)
        self._index = max(result.sizes) if result.sizes else 1
        self._open_active()
        return result

    def _path(self, index: int) -> Path:
        return segment_path(self.directory, index)

    def _open_active(self) -> None:
        """Open (creating if needed) the active segment for appends.

        A new file's name is only durable once the directory is fsynced: the
        next sync does that before it counts anything in the file as synced.
        """
        path = self._path(self._index)
        existed = path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._sizes[self._index] = self._size
        if not existed:
            self._dir_dirty = True

    # ------------------------------------------------------------------ writes
    @property
    def writable(self) -> bool:
        """False while appends are refused (a failed write or fsync, or fsync far behind)."""
        return self.failure is None and self._unsynced_bytes < self.unsynced_limit_bytes

    def write_lines(self, lines: list[bytes]) -> None:
        """Append record lines (already encoded, no newlines inside).

        Error handling (every ``write_*``): :class:`JournalUnavailableError`,
        with nothing appended, while the journal is not :attr:`writable`.
        """
        self._check_writable()
        self._append(b"\n".join(lines) + b"\n", len(lines))

    def write_line(self, line: bytes) -> None:
        """Append one record line of another origin (or one nothing needs to find again)."""
        self._check_writable()
        self._append(line + b"\n", 1)

    def write_local(self, line: bytes, seq: int) -> None:
        """Append one local record line (the ingest fast path) and index where it starts.

        Error handling: :class:`JournalUnavailableError` (nothing appended,
        nothing indexed) while the journal is not :attr:`writable`.
        """
        self._check_writable()
        self.local_index.note(seq, self._index, self._size)
        self._append(line + b"\n", 1)

    def write_local_lines(self, lines: list[bytes], first_seq: int) -> int:
        """Append a batch of local record lines (seqs ``first_seq`` onward); how many it took.

        All of them, unless a segment roll inside the batch fails: then the
        lines up to the roll are taken (as single appends would have been) and
        the rest are not — the caller hands out seqs only to the lines taken.
        Error handling: :class:`JournalUnavailableError` (nothing appended,
        nothing indexed) while the journal is not :attr:`writable`.
        """
        self._check_writable()
        starts = list(accumulate((len(line) + 1 for line in lines), initial=self._size))
        if starts[-1] < self.segment_bytes:
            # No roll inside the batch (the common case): index and append in one go.
            self.local_index.note_run(first_seq, self._index, starts[:-1])
            self._append(b"\n".join(lines) + b"\n", len(lines))
            return len(lines)
        note = self.local_index.note
        start, offset = 0, self._size
        for at, line in enumerate(lines):
            note(first_seq + at, self._index, offset)
            offset += len(line) + 1
            if offset >= self.segment_bytes:
                # Segments roll where single appends would roll them: at the line that fills one.
                self._append(b"\n".join(lines[start : at + 1]) + b"\n", at + 1 - start)
                start, offset = at + 1, self._size
                if self._failed():
                    return start
        if start < len(lines):
            self._append(b"\n".join(lines[start:]) + b"\n", len(lines) - start)
        return len(lines)

    def write_control(self, body: dict[str, Any]) -> None:
        """Append a control line (``ctl`` = replid, gap or close).

        A local replid line with a new replid resets the local index: records
        under the old replid must never be served under the new one.
        """
        self._check_writable()
        self._append_control(body)

    def write_control_durable(self, body: dict[str, Any]) -> None:
        """Append a control line and fsync the active segment before returning.

        Blocks the event loop for one write and one fsync; used only for local
        seq reservations that issuing outran (the first after a start; normally
        the next block is reserved ahead, see ``hot/log.py``), whose whole point
        is to be on disk before any record they cover leaves the process.
        Error handling: :class:`JournalUnavailableError` when the journal is not
        :attr:`writable` or the write or fsync fails (the journal then fails as
        on any write error and recovers through :meth:`retry`).
        """
        self._check_writable()
        self._append_control(body)
        fd = self._fd
        if fd is None or not self._flush_pending():
            raise JournalUnavailableError(f"hot journal refuses appends: {self.failure}")
        try:
            os.fsync(fd)
        except OSError as exc:
            self._fail("fsync", exc)
            raise JournalUnavailableError(f"hot journal refuses appends: {self.failure}") from exc
        if not self._retired:  # a retired segment's unsynced bytes are not covered
            self.durable_bytes = self.appended_bytes

    def _append_control(self, body: dict[str, Any]) -> None:
        if (
            body.get("ctl") == "replid"
            and body.get("o") == self.local_origin
            and (body.get("r") != self._local_replid)
        ):
            self._local_replid = str(body.get("r"))
            self.local_index.reset(int(body.get("s", 0)))
        self._append(encode_control(body) + b"\n", 0)

    def request_sync(self) -> None:
        """Ask the syncer to fsync now rather than at its next interval."""
        self._sync_wanted.set()

    def _check_writable(self) -> None:
        if not self.writable:
            raise JournalUnavailableError(
                f"hot journal refuses appends: {self.failure or 'fsync is far behind'}"
            )

    def _append(self, data: bytes, records: int) -> None:
        """Take ``data`` into the buffer (the record is in the journal from here on).

        A write error while flushing the buffer does not undo the append: the
        bytes stay buffered and :meth:`retry` writes them; only *later* appends
        are refused.
        """
        if self._fd is None:
            raise StorageError("journal is not open")
        self._pending += data
        self._size += len(data)
        self.appended_bytes += len(data)
        self.written_records += records
        self._unsynced += records
        if self._unsynced >= self.fsync_records:
            self._sync_wanted.set()
        roll = self._size >= self.segment_bytes
        # A roll needs the old segment's bytes in its file first.
        if (roll or len(self._pending) >= self.buffer_bytes) and self._flush_pending() and roll:
            self._roll()

    def _flush_pending(self) -> bool:
        """Write the buffer to the active segment; False (journal failed) on an error."""
        fd = self._fd
        if not self._pending or fd is None:
            return True
        chunk = bytes(self._pending)
        start = self._sizes[self._index]
        try:
            done = 0
            while done < len(chunk):
                done += os.write(fd, chunk[done:] if done else chunk)
        except OSError as exc:
            self._fail("write", exc)
            self._cut_back(fd, start)
            return False
        self._pending.clear()
        self._sizes[self._index] = start + len(chunk)
        self._unsynced_chunks.append((self._index, start, chunk))
        self._unsynced_bytes += len(chunk)
        return True

    def _failed(self) -> bool:
        # A method, not the attribute: the steps of retry() set it behind mypy's back.
        return self.failure is not None

    @staticmethod
    def _cut_back(fd: int, size: int) -> bool:
        """Drop the bytes of a partial write, so the file ends with a whole line.

        On failure the next :meth:`retry` tries again before writing anything.
        """
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
        except OSError:
            log.error("cannot cut a partial journal write back", exc_info=True)
            return False
        return True

    def _fail(self, operation: str, exc: OSError) -> None:
        if not self._episode:
            # Logged and counted once per episode, not on every failed retry.
            self._episode = True
            self.failures += 1
            log.error(
                "hot journal failed; appends refused until it recovers",
                operation=operation,
                error=str(exc),
                path=str(self._path(self._index)),
            )
        self.failure = f"{operation}: {exc}"

    def _roll(self) -> None:
        """Start the next segment (the buffer is already flushed into the old one)."""
        if self._fd is not None:
            self._retired.append((self._index, self._fd))  # fsynced and closed by the next sync
            self._fd = None
        self._index += 1
        self._start_segment()

    def _start_segment(self) -> None:
        """Open the segment ``_index`` and write its checkpoint lines."""
        try:
            self._open_active()
        except OSError as exc:
            self._fail("roll", exc)
            return
        failpoint("journal.roll.after_open")
        self._sync_wanted.set()
        if self.on_roll is not None:
            for body in self.on_roll():
                self._append_control(body)
        failpoint("journal.roll.after_checkpoint")

    # ------------------------------------------------------------------- syncs
    async def sync(self) -> None:
        """Flush the buffer and fsync it (and retired segments, and a new name) off-loop.

        Error handling: a failed fsync marks the journal failed (appends are
        refused, :meth:`retry` rewrites and re-syncs); it never raises.
        """
        if self._fd is None or self.failure is not None or not self._flush_pending():
            return
        pending = self._unsynced
        chunks = len(self._unsynced_chunks)
        retired = list(self._retired)
        fds = [fd for _, fd in retired] + [self._fd]
        covered = self.appended_bytes  # everything appended so far is in these files now
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        opened = self._opened
        try:
            await asyncio.to_thread(fsync_all, fds, self.directory if dir_dirty else None)
        except OSError as exc:
            if opened != self._opened:
                return  # closed meanwhile (see below)
            # The kernel may have dropped the pages it failed to write and will
            # report success next time: only a rewrite makes a later fsync count.
            self._dir_dirty = self._dir_dirty or dir_dirty
            self._rewrite_needed = True
            self._fail("fsync", exc)
            return
        if opened != self._opened:
            # close() ran while the fsync thread worked: its descriptors are gone
            # (their numbers may be reused), so nothing here may touch them again.
            return
        self.durable_bytes = max(self.durable_bytes, covered)
        self._forget_synced(pending, chunks, retired)

    def _forget_synced(self, records: int, chunks: int, retired: list[tuple[int, int]]) -> None:
        self._unsynced -= records
        self.synced_records += records
        self._unsynced_bytes -= sum(len(c) for _, _, c in self._unsynced_chunks[:chunks])
        del self._unsynced_chunks[:chunks]
        for entry in retired:
            if entry in self._retired:  # close() may already have closed it
                self._retired.remove(entry)
                os.close(entry[1])

    async def retry(self) -> bool:
        """Try to leave the failed state; True when appends are accepted again.

        In order: redo a failed fsync by writing every unsynced byte again at
        its offset and fsyncing (never trusting the old pages); cut a partial
        write back to the last whole line; write the buffer; finish a roll.
        Each step is retried from the start on the next call if it fails.
        """
        if self.failure is None:
            return True
        if self._lock_fd is None:
            return False  # closed (or never recovered): nothing to reopen
        if self._rewrite_needed:
            paths = {index: self._path(index) for index, _ in self._retired}
            paths[self._index] = self._path(self._index)
            pending = self._unsynced
            chunks = len(self._unsynced_chunks)
            retired = list(self._retired)
            opened = self._opened
            try:
                await asyncio.to_thread(
                    rewrite_and_fsync, paths, list(self._unsynced_chunks), self.directory
                )
            except OSError as exc:
                self.failure = f"fsync: {exc}"
                return False
            if opened != self._opened:
                return False  # closed meanwhile
            self._rewrite_needed = False
            self._dir_dirty = False
            self._forget_synced(pending, chunks, retired)
        previous, self.failure = self.failure, None  # each step below sets it again on error
        if self._fd is None:
            self._start_segment()  # the roll that could not create the next segment
            if self._failed():
                return False
        elif not self._cut_back(self._fd, self._sizes[self._index]):
            self.failure = previous
            return False
        if not self._flush_pending():
            return False
        if self._size >= self.segment_bytes:
            self._roll()
            if self._failed():
                return False
        self._episode = False
        log.warning("hot journal writes resumed", path=str(self._path(self._index)))
        self._sync_wanted.set()
        return True

    async def run_syncer(self) -> None:
        """Sync every ``fsync_interval`` or as soon as ``fsync_records`` are pending.

        While the journal is failed, calls :meth:`retry` every
        ``max(fsync_interval, RETRY_INTERVAL)`` instead: a disk that has space
        again is used again without a restart.
        Error handling: a failed write or fsync marks the journal failed (see
        :meth:`sync`); nothing here raises on I/O errors.
        Resource handling: holds no resources of its own; :meth:`close` does
        the final sync.
        """
        while True:
            if self.failure is not None:
                await asyncio.sleep(max(self.fsync_interval, RETRY_INTERVAL))
                await self.retry()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_wanted.wait(), self.fsync_interval)
            self._sync_wanted.clear()
            if self._unsynced or self._retired or self._pending or self._dir_dirty:
                await self.sync()

    def flush(self) -> None:
        """Write buffered bytes to the file so readers of the files see them (no fsync).

        Does nothing while the journal is failed (the retry owns the buffer then).
        """
        if self.failure is None:
            self._flush_pending()

    def close(self, *, clean: bool = True) -> None:
        """Write the clean-close marker (when ``clean``), fsync and close every file.

        Error handling: never raises on I/O errors. A failed journal is closed
        without the marker and its buffer is lost (the next start then takes a
        new replid, as after a crash); a segment never ends in half a line.
        """
        if self._fd is None and not self._retired:
            self._release_lock()
            return
        try:
            if clean and self.failure is None and self._fd is not None:
                self._append_control({"ctl": "close"})
            if self.failure is None and self._flush_pending() and not self._rewrite_needed:
                fds = [fd for _, fd in self._retired]
                if self._fd is not None:
                    fds.append(self._fd)
                fsync_all(fds, self.directory if self._dir_dirty else None)
        except (OSError, JournalUnavailableError) as exc:
            log.error("hot journal closed uncleanly", error=str(exc))
        finally:
            for _, fd in self._retired:
                os.close(fd)
            if self._fd is not None:
                os.close(self._fd)
            self._retired = []
            self._fd = None
            self._opened += 1
            self._pending.clear()
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------ segment view
    def segments(self) -> list[Segment]:
        """Every segment on disk, oldest first (the active one last)."""
        return [
            Segment(index, self._path(index), size, index == self._index)
            for index, size in sorted(self._sizes.items())
        ]

    @property
    def bytes_on_disk(self) -> int:
        return sum(self._sizes.values())

    def position(self) -> tuple[int, int]:
        """(active segment, byte offset) after flushing: everything before it is readable.

        Only bytes that are in the file count: while the journal is failed, its
        buffered lines are past this position and are read once written.
        """
        self.flush()
        return self._index, self._sizes.get(self._index, 0)

    def delete_segment(self, index: int) -> None:
        """Remove a fully sealed segment.

        Error handling: refuses (``StorageError``) to delete the active segment.
        """
        if index == self._index:
            raise StorageError("the active journal segment cannot be deleted")
        with contextlib.suppress(FileNotFoundError):
            self._path(index).unlink()
        self._sizes.pop(index, None)
        self.local_index.drop_segment(index)

    # --------------------------------------------------------- local reads
    def local_read_plan(
        self, seq: int, position: ReadPosition | None
    ) -> tuple[ReadPosition | None, list[tuple[int, Path]]]:
        """Where a range read for local ``seq`` starts, and the segments it may walk.

        ``position`` (from the previous read of the same subscriber) is reused
        when it continues at ``seq``, so a catching-up subscriber never rescans.
        Flushes first, so every record appended so far is readable from another
        thread. Call on the event loop (the index is not thread-safe).
        """
        self.flush()
        if position is None or position.seq != seq:
            position = self.local_index.locate(seq)
        if position is None:
            return None, []
        start = position.segment
        return position, [(i, self._path(i)) for i in sorted(self._sizes) if i >= start]


def iter_lines(
    path: Path, *, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """Complete lines of a segment as ``(end_offset, line)`` between two byte offsets.

    A trailing partial line (being written) is not yielded. Streams in chunks
    (:func:`complete_lines`), so a large segment is never read whole.
    """
    lines = complete_lines(path, start)
    with contextlib.closing(lines):
        for line_start, line in lines:
            end = line_start + len(line) + 1
            if stop is not None and end > stop:
                return
            yield end, line
