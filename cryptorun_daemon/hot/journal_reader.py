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
  position, across segments, in fixed-size chunks, returning at most one batch.
  Memory per call is one chunk plus one batch, whatever the segment size.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.errors import ProtocolError, StorageError
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
class ReadResult:
    """One batch read from the journal and where the next read continues.

    ``records`` are contiguous, except that the *first* one may be past the
    seq asked for: the range in between is no longer in the journal (a gap).
    """

    records: list[HotRecord]
    position: ReadPosition


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
    """Read ``origin``'s records from ``start.seq`` up to (not including) ``stop_seq``.

    Walks ``segments`` (``(index, path)``, oldest first) from ``start.segment``
    at ``start.offset``; control lines, other origins' records and local
    records below ``start.seq`` are skipped. Stops at ``stop_seq``, after
    ``max_records`` records or about ``max_bytes`` bytes, at the end of the
    newest segment, or *before* a record that does not follow the previous one
    (a deleted segment in between), so every batch is contiguous.

    Error handling: a deleted segment is skipped (the seq check turns it into
    a gap); a local record line that does not parse raises
    :class:`StorageError` naming the file and offset. Resource handling: one
    file open at a time, closed before returning; blocking, so call it in a
    worker thread.
    """
    prefix = origin_prefix(origin)
    want = start.seq
    records: list[HotRecord] = []
    size = 0
    segment, offset = start.segment, start.offset
    for index, path in segments:
        if index < start.segment:
            continue
        if index != start.segment:
            segment, offset = index, 0
        lines = complete_lines(path, offset, chunk_bytes=chunk_bytes)
        with contextlib.closing(lines):
            try:
                for line_start, line in lines:
                    line_end = line_start + len(line) + 1
                    if not line.startswith(prefix):
                        offset = line_end
                        continue
                    try:
                        record = record_from_line(line)
                    except ProtocolError as exc:
                        raise StorageError(
                            f"{path}: unreadable journal record at byte {line_start}: {exc}"
                        ) from None
                    if record.seq < want:
                        offset = line_end
                        continue
                    if record.seq >= stop_seq or (records and record.seq != want):
                        return ReadResult(records, ReadPosition(want, segment, line_start))
                    records.append(record)
                    size += record.size
                    want = record.seq + 1
                    offset = line_end
                    if len(records) >= max_records or size >= max_bytes:
                        return ReadResult(records, ReadPosition(want, segment, offset))
            except FileNotFoundError:
                continue  # sealed and deleted meanwhile: what it held is a gap now
    return ReadResult(records, ReadPosition(want, segment, offset))
