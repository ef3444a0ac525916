"""File-system steps that make hot-journal writes survive a power loss.

``fsync`` of a file makes its bytes durable; its *name* (a new segment, a new
directory) is durable only once the directory holding it is fsynced too. After
a failed ``fsync`` the kernel may already have dropped the dirty pages and
report success next time, so :func:`rewrite_and_fsync` writes the bytes again
from the caller's copy before syncing. Everything here blocks: call it from a
worker thread when the event loop must not wait.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptorun_daemon.storage.atomic import fsync_dir, make_durable_dirs

__all__ = ["fsync_all", "fsync_dir", "make_durable_dirs", "rewrite_and_fsync"]


def fsync_all(fds: list[int], directory: Path | None) -> None:
    """fsync the files, then (after a roll created a name) their directory."""
    for fd in fds:
        os.fsync(fd)
    if directory is not None:
        fsync_dir(directory)


def rewrite_and_fsync(
    paths: dict[int, Path], chunks: list[tuple[int, int, bytes]], directory: Path
) -> None:
    """Write every unsynced chunk again at its offset, then fsync files and directory.

    After a failed fsync the kernel may have marked the unwritten pages clean
    (or dropped them); rewriting makes them dirty with the right bytes, so the
    next fsync really writes them. Each file is opened anew without O_APPEND
    (Linux ignores pwrite's offset on an O_APPEND descriptor). Segments the
    sealer deleted meanwhile are skipped.
    """
    for index, path in paths.items():
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            continue
        try:
            for chunk_index, offset, data in chunks:
                if chunk_index != index:
                    continue
                done = 0
                while done < len(data):
                    done += os.pwrite(fd, data[done:], offset + done)
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)
