"""Reading the local origin's records back out of journal segments.

The mirror server serves a subscriber from the replay buffer while its cursor
is inside it; a subscriber that fell behind the buffer is served from here:
the on-disk segments still hold every record that has not been sealed into
warm partitions (the PSYNC backlog extended to disk).

Two pieces:

- :class:`LocalIndex`, kept by the journal on the event loop: a *sparse*
  ``seq → (segment, byte offset)`` index of the local origin's records under
  its current replid — one mark at the first local record of each segment and
  one every ``spacing`` bytes — so a read never scans more than ``spacing``
  bytes to find its first record, and the index costs a few tuples per MiB of
  journal.
- :func:`read_local_records`, run in a worker thread: a range read from a
  position, across segments, in fixed-size chunks, returning at most one batch
  as a :class:`LineRun` of the lines' bytes — never decoded, so the mirror
  server forwards them as they are. Memory per call is one chunk plus one
  batch, whatever the segment size.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.hot.record import HotRecord, origin_prefix, record_from_line

READ_CHUNK_BYTES = 256 << 10
MARK_SPACING_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ReadPosition:
    """Where a range read continues: the next seq wanted and the byte to read from."""

    seq: int
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class LineRun:
    """A contiguous run of local record lines exactly as they are in the journal.

    ``body`` is the lines joined by newlines (no trailing newline): whole runs of
    lines sliced out of the segment, never decoded, so a records frame is the
    header plus ``body`` (``protocol.encode_run``). The ingest times of the first
    and last line are read from their canonical prefix, for the frame header.
    """

    first_seq: int
    count: int
    body: bytes
    first_ingest_ns: int
    last_ingest_ns: int

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def lines(self) -> list[bytes]:
        return self.body.split(b"\n")


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One batch read from the journal and where the next read continues.

    The batch is contiguous, except that its *first* seq may be past the seq
    asked for: the range in between is no longer in the journal (a gap).
    """

    run: LineRun | None
    position: ReadPosition

    @property
    def records(self) -> list[HotRecord]:
        """The batch decoded (tools and tests; the mirror forwards :attr:`run` as bytes)."""
        return [] if self.run is None else [record_from_line(line) for line in self.run.lines()]


class LocalIndex:
    """Sparse index of the local origin's records under its current replid.

    Records with seq ``<= base`` belong to an earlier replid and are never
    indexed, so a read through the index can only return records that are
    valid under the replid the origin announces now.
    """

    def __init__(self, spacing: int = MARK_SPACING_BYTES) -> None:
        self.spacing = spacing
        self.base = 0
        self._seqs: list[int] = []
        self._places: list[tuple[int, int]] = []
        self._last: tuple[int, int] = (-1, 0)

    def __len__(self) -> int:
        return len(self._seqs)

    @property
    def first_seq(self) -> int | None:
        """Oldest local seq still in a journal segment, ``None`` when there is none."""
        return self._seqs[0] if self._seqs else None

    def note(self, seq: int, segment: int, offset: int) -> None:
        """Local record ``seq`` starts at ``offset`` of ``segment`` (called for every one)."""
        last_segment, last_offset = self._last
        if segment != last_segment or offset - last_offset >= self.spacing:
            self._seqs.append(seq)
            self._places.append((segment, offset))
            self._last = (segment, offset)

    def note_run(self, first_seq: int, segment: int, starts: Sequence[int]) -> None:
        """Exactly ``note(first_seq + i, segment, starts[i])`` for each ``i`` (``starts`` rising).

        One bisection per mark instead of a call per record: marks are
        ``spacing`` bytes apart, so a batch of a thousand lines holds a few.
        """
        at, count = 0, len(starts)
        while at < count:
            last_segment, last_offset = self._last
            hit = (
                at
                if segment != last_segment
                else bisect.bisect_left(starts, last_offset + self.spacing, at)
            )
            if hit >= count:
                return
            self._seqs.append(first_seq + hit)
            self._places.append((segment, starts[hit]))
            self._last = (segment, starts[hit])
            at = hit + 1

    def reset(self, base: int) -> None:
        """A new replid starts after ``base``: forget every mark of the previous one."""
        self.base = base
        self._seqs, self._places = [], []
        self._last = (-1, 0)

    def drop_segment(self, segment: int) -> None:
        """A segment was deleted (sealed): its records are no longer servable."""
        keep = [i for i, (s, _) in enumerate(self._places) if s != segment]
        if len(keep) != len(self._seqs):
            self._seqs = [self._seqs[i] for i in keep]
            self._places = [self._places[i] for i in keep]

    def locate(self, seq: int) -> ReadPosition | None:
        """Where to start reading for ``seq``: the last mark at or before it.

        A seq older than every mark starts at the oldest mark (the reader then
        reports the missing range as a gap); ``None`` when nothing is indexed.
        """
        if not self._seqs:
            return None
        at = max(0, bisect.bisect_right(self._seqs, seq) - 1)
        segment, offset = self._places[at]
        return ReadPosition(seq, segment, offset)


def complete_lines(
    path: Path, start: int = 0, *, chunk_bytes: int = READ_CHUNK_BYTES
) -> Generator[tuple[int, bytes], None, None]:
    """``(start offset, line)`` of every newline-terminated line from byte ``start``.

    Reads ``chunk_bytes`` at a time, so memory stays one chunk plus the longest
    line. A trailing line without its newline (being written, or torn by a
    crash) is not yielded. Error handling: ``FileNotFoundError`` on the first
    ``next()`` when the segment is gone.
    """
    with path.open("rb") as handle:
        handle.seek(start)
        pending = b""
        base = start  # file offset of pending[0]
        while True:
            data = handle.read(chunk_bytes)
            if not data:
                return
            buffer = pending + data if pending else data
            cut = 0
            while True:
                end = buffer.find(b"\n", cut)
                if end < 0:
                    break
                yield base + cut, buffer[cut:end]
                cut = end + 1
            pending = buffer[cut:]
            base += cut


def read_local_records(
    segments: Sequence[tuple[int, Path]],
    origin: str,
    start: ReadPosition,
    *,
    stop_seq: int,
    max_records: int,
    max_bytes: int,
    chunk_bytes: int = READ_CHUNK_BYTES,
) -> ReadResult:
    """Read ``origin``'s record lines from ``start.seq`` up to (not including) ``stop_seq``.

    Walks ``segments`` (``(index, path)``, oldest first) from ``start.segment``
    at ``start.offset``; control lines, other origins' records and local
    records below ``start.seq`` are skipped. Stops at ``stop_seq``, after
    ``max_records`` records or about ``max_bytes`` bytes, at the end of the
    newest segment, or *before* a record that does not follow the previous one
    (a deleted segment in between), so every batch is contiguous.

    Nothing is decoded: a local line is recognised by the origin's canonical
    prefix ``{"o":<origin>,"s":<seq>,"i":<ingest_ns>,`` (the only thing read
    from it), and consecutive local lines are sliced out of the chunk as one
    piece. That is what makes catch-up cheaper than ingest.

    Error handling: a deleted segment is skipped (the seq check turns it into
    a gap); a local line whose prefix does not parse raises
    :class:`StorageError` naming the file and offset. Resource handling: one
    file open at a time, closed before returning; memory is one chunk plus one
    batch; blocking, so call it in a worker thread.
    """
    reader = _RunReader(origin, start.seq, stop_seq, max_records, max_bytes)
    segment, offset = start.segment, start.offset
    for index, path in segments:
        if index < start.segment:
            continue
        if index != start.segment:
            segment, offset = index, 0
        try:
            for base, buffer in _complete_chunks(path, offset, chunk_bytes):
                stopped, offset = reader.scan(buffer, base, path)
                if stopped:
                    return ReadResult(reader.run(), ReadPosition(reader.want, segment, offset))
        except FileNotFoundError:
            continue  # sealed and deleted meanwhile: what it held is a gap now
    return ReadResult(reader.run(), ReadPosition(reader.want, segment, offset))


def _complete_chunks(path: Path, start: int, chunk_bytes: int) -> Generator[tuple[int, bytes]]:
    """``(file offset, bytes)`` pieces of whole lines from byte ``start``, ``chunk_bytes`` at
    a time; a trailing line without its newline is never part of one."""
    with path.open("rb") as handle:
        handle.seek(start)
        pending = b""
        base = start
        while True:
            data = handle.read(chunk_bytes)
            if not data:
                return
            buffer = pending + data if pending else data
            cut = buffer.rfind(b"\n") + 1
            if cut:
                yield base, buffer[:cut]
            pending = buffer[cut:]
            base += cut


class _RunReader:
    """The state of one :func:`read_local_records` call: the pieces of the run so far."""

    def __init__(
        self, origin: str, want: int, stop_seq: int, max_records: int, max_bytes: int
    ) -> None:
        self.prefix = origin_prefix(origin)
        self.want = want
        self.stop_seq = stop_seq
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.pieces: list[bytes] = []
        self.count = 0
        self.size = 0
        self.first_seq = 0
        self.first_ingest_ns = 0
        self.last_ingest_ns = 0

    def run(self) -> LineRun | None:
        if not self.count:
            return None
        return LineRun(
            self.first_seq,
            self.count,
            b"\n".join(self.pieces),
            self.first_ingest_ns,
            self.last_ingest_ns,
        )

    def scan(self, buffer: bytes, base: int, path: Path) -> tuple[bool, int]:
        """Take the local lines of ``buffer`` (whole lines at file offset ``base``).

        Returns ``(stopped, offset)``: whether the batch is complete, and the
        file offset the next read continues from.
        """
        prefix, plen = self.prefix, len(self.prefix)
        pos, size = 0, len(buffer)
        run_start = -1  # start of the open piece (consecutive local lines), -1 when none
        run_end = 0
        while pos < size:
            end = buffer.find(b"\n", pos)
            if not buffer.startswith(prefix, pos):
                if run_start >= 0:
                    self.pieces.append(buffer[run_start:run_end])
                    run_start = -1
                pos = end + 1
                continue
            seq, ingest_ns = _seq_and_ingest(buffer, pos + plen, end, path, base + pos)
            if seq < self.want:
                if run_start >= 0:
                    self.pieces.append(buffer[run_start:run_end])
                    run_start = -1
                pos = end + 1
                continue
            if seq >= self.stop_seq or (self.count and seq != self.want):
                if run_start >= 0:
                    self.pieces.append(buffer[run_start:run_end])
                return True, base + pos
            if not self.count:
                self.first_seq, self.first_ingest_ns = seq, ingest_ns
            self.last_ingest_ns = ingest_ns
            if run_start < 0:
                run_start = pos
            run_end = end
            self.count += 1
            self.size += end - pos + 1
            self.want = seq + 1
            pos = end + 1
            if self.count >= self.max_records or self.size >= self.max_bytes:
                self.pieces.append(buffer[run_start:run_end])
                return True, base + pos
        if run_start >= 0:
            self.pieces.append(buffer[run_start:run_end])
        return False, base + size


_INGEST_KEY = b',"i":'


def _seq_and_ingest(buffer: bytes, at: int, end: int, path: Path, offset: int) -> tuple[int, int]:
    """Seq and ingest time from a local line's canonical prefix (``<seq>,"i":<ns>,``).

    Error handling: :class:`StorageError` naming the file and offset when the
    prefix is not canonical (every writer of the journal writes it so).
    """
    comma = buffer.find(b",", at, end)
    after = buffer.find(b",", comma + len(_INGEST_KEY), end)
    try:
        if comma < 0 or after < 0 or not buffer.startswith(_INGEST_KEY, comma):
            raise ValueError("no canonical seq/ingest prefix")
        return int(buffer[at:comma]), int(buffer[comma + len(_INGEST_KEY) : after])
    except ValueError as exc:
        raise StorageError(f"{path}: unreadable journal record at byte {offset}: {exc}") from None
