"""Finding and moving aside damage in the hot journal (``cryptorun journal check|salvage``).

Recovery (``journal.py``) and the two commands read segments through the same
:func:`scan_segment`, so they agree on what "damaged" means:

- every complete line must be a journal line: a record ``{"o","s","i","d","f"}``
  with typed fields, or a control line (``replid``, ``gap``, ``close``) with
  the fields recovery uses;
- only the *newest* segment may end in a torn line (a crash mid-write): an
  unparsable or newline-less last line there is truncated at start-up. A bad
  line with anything after it, or a bad line in an older segment, is damage.

Salvage never deletes: the damaged tail of the first damaged segment and every
later segment are moved to ``{storage.root}/_quarantine/journal/<UTC stamp>/``,
the damaged segment is cut at the damage, and a ``gap`` control line for the
local origin's lost seqs is written to a fresh segment whose index is higher
than any the journal ever had (so sealer positions saved before the salvage
never cover the new records).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptorun_daemon.errors import JournalDamagedError, ProtocolError, StorageError
from cryptorun_daemon.hot.durable import fsync_dir, make_durable_dirs
from cryptorun_daemon.hot.journal_reader import complete_lines
from cryptorun_daemon.hot.record import HotRecord, decode_line, encode_control, record_from_line

SUFFIX = ".jsonl"
LOCK_NAME = ".lock"
CONTROL_KINDS = frozenset({"replid", "gap", "close", "reserve"})


def journal_directory(storage_root: Path) -> Path:
    """Where a region's hot journal lives under ``storage.root``."""
    return storage_root / "_state" / "hot" / "journal"


def quarantine_directory(storage_root: Path) -> Path:
    """Where ``journal salvage`` keeps what it moved aside (never deleted)."""
    return storage_root / "_quarantine" / "journal"


def segment_path(directory: Path, index: int) -> Path:
    return directory / f"{index:010d}{SUFFIX}"


def segment_indexes(directory: Path) -> list[int]:
    """Indexes of the segment files in ``directory``, oldest first."""
    found = []
    for path in directory.glob(f"*{SUFFIX}"):
        stem = path.name[: -len(SUFFIX)]
        if stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def parse_journal_line(line: bytes) -> tuple[dict[str, Any], HotRecord | None]:
    """A journal line's JSON object and, for a record line, the record.

    Error handling: :class:`ProtocolError` when the line is neither a valid
    record nor a control line carrying the fields recovery reads.
    """
    body = decode_line(line)
    ctl = body.get("ctl")
    if ctl is None:
        return body, record_from_line(line)
    if ctl not in CONTROL_KINDS:
        raise ProtocolError(f"unknown control line {ctl!r}")
    if ctl == "replid" and not (
        isinstance(body.get("o"), str)
        and isinstance(body.get("r"), str)
        and isinstance(body.get("s", 0), int)
    ):
        raise ProtocolError("replid line lacks a string o/r or an integer s")
    if ctl == "reserve" and not (isinstance(body.get("o"), str) and isinstance(body.get("s"), int)):
        raise ProtocolError("reserve line lacks a string o or an integer s")
    if ctl == "gap" and not isinstance(body.get("origin"), str):
        raise ProtocolError("gap line lacks its origin")
    return body, None


@dataclass
class Tail:
    """Where the good lines of a scanned segment end, and why the rest is not a line."""

    end: int = 0
    torn: str | None = None


def scan_segment(
    path: Path, *, newest: bool, tail: Tail
) -> Iterator[tuple[int, bytes, dict[str, Any], HotRecord | None]]:
    """``(offset, line, body, record)`` of every good line of one segment.

    Fills ``tail``: ``end`` = offset after the last good line; ``torn`` = the
    reason the bytes after it are no line (only ever set for the newest segment).
    Streams in chunks (``complete_lines``). Error handling:
    :class:`JournalDamagedError` (segment, offset, reason) for damage as defined
    in the module docstring.
    """
    size = path.stat().st_size
    lines = complete_lines(path)
    with contextlib.closing(lines):
        for start, line in lines:
            try:
                body, record = parse_journal_line(line)
            except ProtocolError as exc:
                if newest and next(lines, None) is None:
                    tail.torn = str(exc)
                    return
                raise JournalDamagedError(path, start, str(exc)) from None
            tail.end = start + len(line) + 1
            yield start, line, body, record
    if tail.end < size:
        if not newest:
            raise JournalDamagedError(path, tail.end, "segment ends inside a line")
        tail.torn = "line has no newline (torn write)"


@dataclass(frozen=True)
class Damage:
    index: int
    path: Path
    offset: int
    reason: str


@dataclass
class CheckReport:
    """What ``journal check`` found; ``damage`` is None for a readable journal."""

    directory: Path
    segments: int = 0
    bytes: int = 0
    torn_bytes: int = 0
    damage: Damage | None = None
    last_seq: dict[str, int] = field(default_factory=dict)


def check_journal(directory: Path) -> CheckReport:
    """Read every segment the way recovery does, changing nothing."""
    report = CheckReport(directory)
    if not directory.is_dir():
        return report
    indexes = segment_indexes(directory)
    for position, index in enumerate(indexes):
        path = segment_path(directory, index)
        report.segments += 1
        report.bytes += path.stat().st_size
        tail = Tail()
        try:
            for _, _, _, record in scan_segment(
                path, newest=position == len(indexes) - 1, tail=tail
            ):
                if record is not None:
                    seen = report.last_seq.get(record.origin, 0)
                    report.last_seq[record.origin] = max(seen, record.seq)
        except JournalDamagedError as exc:
            report.damage = Damage(index, path, exc.offset, exc.reason)
            return report
        if tail.torn is not None:
            report.torn_bytes = path.stat().st_size - tail.end
    return report


@contextlib.contextmanager
def journal_lock(directory: Path) -> Iterator[None]:
    """Hold the journal's lock file (a POSIX lock: other processes are refused).

    The daemon holds it from recovery to close, so salvage cannot cut a journal
    that a running daemon appends to. Error handling: :class:`StorageError`
    when another process holds it.
    """
    fd = acquire_lock(directory)
    try:
        yield
    finally:
        os.close(fd)


def acquire_lock(directory: Path) -> int:
    """Open and lock ``directory/.lock``; the lock lasts until the fd is closed."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise StorageError(
                f"{directory}: the hot journal is in use by another process"
                " (is the daemon running?)"
            ) from None
        raise
    return fd


@dataclass
class SalvageReport:
    damage: Damage | None
    quarantine: Path | None = None
    moved: list[Path] = field(default_factory=list)
    moved_bytes: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)


def salvage_journal(
    directory: Path, quarantine_root: Path, *, local_origin: str, now_ns: int | None = None
) -> SalvageReport:
    """Move the damaged tail aside, record the local origin's lost seqs as a gap.

    Error handling: :class:`StorageError` when the daemon holds the journal;
    ``OSError`` from the file system propagates (nothing is removed before its
    copy is fsynced in the quarantine folder).
    Resource handling: holds the journal lock for the whole operation.
    """
    if not directory.is_dir():
        return SalvageReport(None)
    with journal_lock(directory):
        report = check_journal(directory)
        damage = report.damage
        result = SalvageReport(damage)
        if damage is None:
            return result
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = quarantine_root / stamp
        suffix = 1
        while aside.exists():
            suffix += 1
            aside = quarantine_root / f"{stamp}-{suffix}"
        make_durable_dirs(aside)
        result.quarantine = aside
        indexes = segment_indexes(directory)
        last_good = _last_seqs_before(directory, indexes, damage)
        # 1. The damaged segment's tail: copied aside (fsynced), then cut off.
        tail_copy = aside / f"{damage.path.name}.from-{damage.offset}"
        with damage.path.open("rb") as source, tail_copy.open("wb") as target:
            source.seek(damage.offset)
            shutil.copyfileobj(source, target)
            target.flush()
            os.fsync(target.fileno())
        result.moved.append(tail_copy)
        result.moved_bytes += tail_copy.stat().st_size
        # 2. Every later segment moved whole (a rename when on one file system).
        later = [i for i in indexes if i > damage.index]
        for index in later:
            target_path = aside / segment_path(directory, index).name
            shutil.move(segment_path(directory, index), target_path)
            result.moved.append(target_path)
            result.moved_bytes += target_path.stat().st_size
        fsync_dir(aside)
        with damage.path.open("r+b") as handle:
            handle.truncate(damage.offset)
            os.fsync(handle.fileno())
        # 3. The lost range of the local origin, as far as the moved bytes still say.
        seen = _max_seqs(result.moved)
        at_ns = now_ns if now_ns is not None else time.time_ns()
        missing_from = last_good.get(local_origin, 0) + 1
        highest = seen.get(local_origin)
        result.gaps.append(
            {
                "origin": local_origin,
                "reason": "salvaged",
                "missing_from": missing_from,
                "missing_to": highest if highest is not None and highest >= missing_from else None,
                "quarantined": str(aside),
                "at_ns": at_ns,
            }
        )
        new_index = max(indexes) + 1
        data = b"".join(encode_control({"ctl": "gap", **gap}) + b"\n" for gap in result.gaps)
        fd = os.open(
            segment_path(directory, new_index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640
        )
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(directory)
        return result


def _last_seqs_before(directory: Path, indexes: list[int], damage: Damage) -> dict[str, int]:
    """Highest seq per origin in the good part of the journal (everything before the damage)."""
    last: dict[str, int] = {}
    for index in indexes:
        if index > damage.index:
            break
        path = segment_path(directory, index)
        stop = damage.offset if index == damage.index else None
        lines = complete_lines(path)
        with contextlib.closing(lines):
            for start, line in lines:
                if stop is not None and start >= stop:
                    break
                body, record = parse_journal_line(line)
                if record is not None:
                    last[record.origin] = max(last.get(record.origin, 0), record.seq)
                elif body.get("ctl") == "replid":
                    origin = str(body["o"])
                    last[origin] = max(last.get(origin, 0), int(body.get("s", 0)))
    return last


def _max_seqs(paths: list[Path]) -> dict[str, int]:
    """Highest seq per origin among the lines of the moved files that still parse."""
    seen: dict[str, int] = {}
    for path in paths:
        lines = complete_lines(path)
        with contextlib.closing(lines):
            for _, line in lines:
                try:
                    record = record_from_line(line)
                except ProtocolError:
                    continue
                seen[record.origin] = max(seen.get(record.origin, 0), record.seq)
    return seen
