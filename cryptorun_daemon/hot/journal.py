"""The segmented, append-only on-disk journal of the hot log.

Every record the region applies (local or mirrored) is one line in the active
segment file ``{index:010d}.jsonl``; control lines record replication-id
changes, unfillable gaps and clean shutdowns. Writes go to the page cache at
once; a syncer flushes and ``fsync``s every ``fsync_interval`` seconds or after
``fsync_records`` records, whichever comes first. A crash therefore loses at
most that unsynced window (docs/HOT_TIER.md).

Segments are rolled at ``segment_bytes`` and deleted only by the sealer, after
every record in them is inside a sealed warm partition. Until then the mirror
server can read the local origin's records back from them
(``journal_reader``), through the sparse index this journal keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from cryptorun_daemon.errors import ProtocolError, StorageError
from cryptorun_daemon.hot.journal_reader import LocalIndex, ReadPosition, complete_lines
from cryptorun_daemon.hot.record import HotRecord, decode_line, encode_control, record_from_line

log = structlog.get_logger("cryptorun.hot.journal")
SUFFIX = ".jsonl"


@dataclass
class OriginState:
    """What the journal says about one origin: its current replid and last seq."""

    replid: str
    last_seq: int = 0


@dataclass
class Recovery:
    """The state rebuilt from the journal at start-up.

    ``clean`` is true when the last line written was a clean-close marker; a
    local log recovered from an unclean journal must take a new replid because
    peers may hold records this region lost in the unsynced window.
    """

    origins: dict[str, OriginState] = field(default_factory=dict)
    tail: list[HotRecord] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    clean: bool = False
    empty: bool = True
    torn_bytes: int = 0
    # Highest local seq ever reserved (``reserve`` lines): no seq up to it may be reissued.
    reserved: int = 0


@dataclass(frozen=True)
class Segment:
    index: int
    path: Path
    size: int
    active: bool


class Journal:
    """Owns the segment files of one region's hot journal.

    Resource handling: :meth:`recover` opens the active segment; :meth:`close`
    writes the clean-close marker, syncs and closes it. Between the two, only
    the event-loop thread writes; ``fsync`` runs in a worker thread so a slow
    disk never stalls the loop.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int,
        fsync_interval: float,
        fsync_records: int,
        gaps_kept: int = 100,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.fsync_records = fsync_records
        self._gaps_kept = gaps_kept
        self._file: IO[bytes] | None = None
        self._index = 0
        self._size = 0
        self._sizes: dict[int, int] = {}
        self._retired: list[IO[bytes]] = []
        self._unsynced = 0
        self._sync_wanted = asyncio.Event()
        # Called after a roll: control lines that make the new segment self-describing
        # (current replid and seq of every origin), so deleting old segments never
        # loses the replication ids recovery needs.
        self.on_roll: Callable[[], list[dict[str, Any]]] | None = None
        self.synced_records = 0
        self.written_records = 0
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
        a corrupt line anywhere else raises :class:`StorageError` naming the
        file and offset, because silently skipping it would lose data.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self.local_origin = local_origin
        self.local_index.reset(0)
        self._local_replid = None
        local_index = self.local_index
        result = Recovery()
        tail: deque[HotRecord] = deque()
        tail_size = 0
        last_was_close = False
        indexes = self._indexes()
        for position, index in enumerate(indexes):
            path = self._path(index)
            newest = position == len(indexes) - 1
            # Streamed in chunks: recovery never holds a whole segment in memory.
            file_size = path.stat().st_size
            offset = 0
            torn: str | None = None
            lines = complete_lines(path)
            for line_start, line in lines:
                try:
                    body = decode_line(line)
                except ProtocolError as exc:
                    offset, torn = line_start, str(exc)
                    lines.close()
                    break
                offset = line_start + len(line) + 1
                result.empty = False
                ctl = body.get("ctl")
                last_was_close = ctl == "close"
                if ctl == "replid":
                    origin, replid = str(body["o"]), str(body["r"])
                    known = result.origins.get(origin)
                    if known is not None and known.replid == replid:
                        # A checkpoint at a segment start: same stream, nothing resets.
                        known.last_seq = max(known.last_seq, int(body.get("s", 0)))
                        continue
                    result.origins[origin] = OriginState(replid, int(body.get("s", 0)))
                    if origin == local_origin:
                        tail.clear()
                        tail_size = 0
                        local_index.reset(int(body.get("s", 0)))
                        self._local_replid = replid
                elif ctl == "reserve" and body.get("o") == local_origin:
                    result.reserved = max(result.reserved, int(body.get("s", 0)))
                elif ctl == "gap":
                    result.gaps.append({k: v for k, v in body.items() if k != "ctl"})
                    del result.gaps[: -self._gaps_kept]
                elif ctl is None:
                    record = record_from_line(line)
                    state = result.origins.get(record.origin)
                    if state is None:
                        state = result.origins[record.origin] = OriginState("")
                    state.last_seq = max(state.last_seq, record.seq)
                    if record.origin == local_origin:
                        local_index.note(record.seq, index, line_start)
                        tail.append(record)
                        tail_size += record.size
                        while len(tail) > 1 and (
                            len(tail) > tail_records or tail_size > tail_bytes
                        ):
                            tail_size -= tail.popleft().size
            if torn is None and offset < file_size:
                torn = "line has no newline (torn write)"
            self._sizes[index] = file_size
            if torn is not None:
                if not newest:
                    raise StorageError(f"{path}: corrupt journal line at byte {offset}: {torn}")
                result.torn_bytes = file_size - offset
                log.warning(
                    "truncating torn journal tail",
                    path=str(path),
                    offset=offset,
                    bytes=result.torn_bytes,
                )
                with path.open("r+b") as handle:
                    handle.truncate(offset)
                self._sizes[index] = offset
        result.clean = last_was_close
        result.tail = list(tail)
        self._index = indexes[-1] if indexes else 1
        self._open_active()
        return result

    def _indexes(self) -> list[int]:
        found = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            stem = path.name[: -len(SUFFIX)]
            if stem.isdigit():
                found.append(int(stem))
        return sorted(found)

    def _path(self, index: int) -> Path:
        return self.directory / f"{index:010d}{SUFFIX}"

    def _open_active(self) -> None:
        path = self._path(self._index)
        self._file = path.open("ab", buffering=1 << 20)
        self._size = path.stat().st_size
        self._sizes[self._index] = self._size

    # ------------------------------------------------------------------ writes
    def write_lines(self, lines: list[bytes]) -> None:
        """Append record lines (already encoded, no newlines inside)."""
        self._write(b"\n".join(lines) + b"\n", len(lines))

    def write_line(self, line: bytes) -> None:
        """Append one record line of another origin (or one nothing needs to find again)."""
        self._write(line + b"\n", 1)

    def write_local(self, line: bytes, seq: int) -> None:
        """Append one local record line (the ingest fast path) and index where it starts."""
        self.local_index.note(seq, self._index, self._size)
        self._write(line + b"\n", 1)

    def write_control(self, body: dict[str, Any]) -> None:
        """Append a control line (``ctl`` = replid, gap or close).

        A local replid line with a new replid resets the local index: records
        under the old replid must never be served under the new one.
        """
        if (
            body.get("ctl") == "replid"
            and body.get("o") == self.local_origin
            and (body.get("r") != self._local_replid)
        ):
            self._local_replid = str(body.get("r"))
            self.local_index.reset(int(body.get("s", 0)))
        self._write(encode_control(body) + b"\n", 0)

    def write_control_durable(self, body: dict[str, Any]) -> None:
        """Append a control line and fsync the active segment before returning.

        Blocks the event loop for one fsync; used only for seq reservations
        (once per ``SEQ_RESERVE_BLOCK`` local records), whose whole point is to
        be on disk before any record they cover can leave this process.
        """
        self.write_control(body)
        handle = self._file
        if handle is None:
            raise StorageError("journal is not open")
        handle.flush()
        os.fsync(handle.fileno())

    def _write(self, data: bytes, records: int) -> None:
        handle = self._file
        if handle is None:
            raise StorageError("journal is not open")
        handle.write(data)
        self._size += len(data)
        self._sizes[self._index] = self._size
        self.written_records += records
        self._unsynced += records
        if self._unsynced >= self.fsync_records:
            self._sync_wanted.set()
        if self._size >= self.segment_bytes:
            self._roll()

    def _roll(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._retired.append(self._file)  # fsynced and closed by the next sync
        self._index += 1
        self._open_active()
        self._sync_wanted.set()
        if self.on_roll is not None:
            for body in self.on_roll():
                self.write_control(body)

    # ------------------------------------------------------------------- syncs
    async def sync(self) -> None:
        """Flush buffered writes and fsync them (and any retired segment) off-loop."""
        handle = self._file
        if handle is None:
            return
        handle.flush()
        pending = self._unsynced
        retired = list(self._retired)
        fds = [h.fileno() for h in retired] + [handle.fileno()]
        # Only what was fsynced is forgotten: if fsync fails, the records stay
        # counted as unsynced and the retired segments stay open for the next try.
        await asyncio.to_thread(_fsync_all, fds)
        self._unsynced -= pending
        self._retired = [h for h in self._retired if h not in retired]
        for old in retired:
            old.close()
        self.synced_records += pending

    async def run_syncer(self) -> None:
        """Sync every ``fsync_interval`` or as soon as ``fsync_records`` are pending.

        Error handling: an ``OSError`` from fsync propagates so the supervisor
        logs and restarts the syncer (the data stays in the page cache).
        Resource handling: holds no resources of its own; :meth:`close` does
        the final sync.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_wanted.wait(), self.fsync_interval)
            self._sync_wanted.clear()
            if self._unsynced or self._retired:
                await self.sync()

    def flush(self) -> None:
        """Push buffered bytes to the OS so readers of the files see them (no fsync)."""
        if self._file is not None:
            self._file.flush()

    def close(self, *, clean: bool = True) -> None:
        """Write the clean-close marker (when ``clean``), fsync and close every file."""
        if self._file is None:
            return
        if clean:
            self.write_control({"ctl": "close"})
        self._file.flush()
        fds = [h.fileno() for h in self._retired] + [self._file.fileno()]
        _fsync_all(fds)
        for handle in [*self._retired, self._file]:
            handle.close()
        self._retired = []
        self._file = None

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
        """(active segment, byte offset) after flushing: everything before it is readable."""
        self.flush()
        return self._index, self._size

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


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)
