"""Crash-safe file primitives: write temp → fsync → rename → fsync the directory.

A reader (or a restarted daemon) sees either the old file or the complete new
one, never a torn write: ``rename`` is atomic within a filesystem, the fsync of
the file makes its bytes durable before the name points at them, and the fsync
of the directory makes the new name itself durable.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make renames and creations inside ``directory`` durable.

    Error handling: platforms that cannot open a directory for fsync (not
    Linux) are tolerated; any other ``OSError`` propagates.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (IsADirectoryError, PermissionError):  # pragma: no cover - non-POSIX
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable_dirs(directory: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every directory it creates.

    A new directory's *name* is durable only once its parent is fsynced; a
    partition folder created for a seal or a replicated copy must not vanish
    after a power loss while its files' data survived.
    """
    missing: list[Path] = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s bytes to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``.

    Resource handling: the temporary file is hidden
    (``.{name}.{pid}.{random}.tmp``, created exclusively, so concurrent writers
    in one process or several never share one) in the same directory so the
    rename never crosses filesystems; it is removed when the write fails, and a
    crash leaves only a hidden temp file that catalog scans skip.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def commit_file(partial: Path, final: Path, *, sync_dir: bool = True) -> None:
    """Move a fully written ``partial`` to ``final`` (fsync, rename, fsync dir).

    ``sync_dir=False`` leaves the directory fsync to a later commit in the same
    directory (the replica's manifest write fsyncs it before ``_SUCCESS``
    exists), saving one fsync per file; a crash before then at worst loses the
    rename, and the file is fetched again.
    """
    fsync_file(partial)
    os.replace(partial, final)
    if sync_dir:
        fsync_dir(final.parent)


def move_aside(source: Path, target: Path) -> Path:
    """Rename ``source`` to ``target`` (creating parents) without ever overwriting.

    When ``target`` exists a numeric suffix is added, so two moves to the same
    place both survive. Returns where ``source`` ended up.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate = target
    counter = 1
    while candidate.exists():
        candidate = target.with_name(f"{target.name}.{counter}")
        counter += 1
    os.rename(source, candidate)
    fsync_dir(candidate.parent)
    fsync_dir(source.parent)
    return candidate
