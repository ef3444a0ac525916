"""The fence lock and write permits: a write's last check and its commit happen as one step.

A seal (or a replica's commit) checks the fence, then renames its manifest and
``_SUCCESS`` into place; a promotion reaches storage as a rewrite of the fence
(:func:`~cryptorun_daemon.storage.write_fence.advance_fence`). Both hold the lock of
the tier here, so no promotion can be recorded between a writer's last check
and its rename: either the write commits first and the promotion is recorded
after it (the old epoch then ends after the seal, which classification
accepts as history), or the promotion is recorded first and the writer's
re-read of the fence refuses.

The lock has two layers, taken in this order:

- a :class:`threading.Lock` per (storage root, tier) for the threads of this
  process (the event loop advancing the fence, worker threads sealing);
- ``flock`` on ``{root}/_state/fence/{tier}.lock`` for other processes sharing
  the root (the ``cryptorun partitions seal`` CLI beside a daemon). The lock
  file is never replaced; the fence file itself is (atomic rename), so it
  cannot carry a lock.

**Write permits.** The process that coordinates a root (the daemon's failover
component) installs a permit for it: a function asked, under the lock and
right before the rename, whether this region may still write a tier as its
primary. The daemon's answer is "no" once its etcd lease has no more than the
safety margin left (docs/FAILOVER_STORES.md). A process without a permit (the
CLI) relies on the fence alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from cryptorun_daemon.errors import StorageError, WriteRefusedError

FENCE_DIR: Final = Path("_state") / "fence"

#: ``tier -> None`` when this region may write ``tier`` now, else ``(reason, detail)``.
#: Called under the fence lock, possibly from a worker thread: it must read
#: memory only (no I/O, no event loop).
WritePermit = Callable[[str], tuple[str, str] | None]

# Invariant: one threading lock per (real root path, tier) for the life of the
# process; _registry guards the creation of locks and the permit table.
_registry = threading.Lock()
_locks: dict[tuple[str, str], threading.Lock] = {}
_permits: dict[str, WritePermit] = {}


def lock_path(root: Path, tier: str) -> Path:
    return root / FENCE_DIR / f"{tier}.lock"


@contextlib.contextmanager
def fence_lock(root: Path, tier: str) -> Iterator[None]:
    """Hold ``tier``'s fence lock under ``root`` (this process's threads and other processes).

    Blocking: waits for whoever holds it; holders keep it for one fence
    rewrite or one commit (a few fsyncs).

    Error handling: :class:`StorageError` when the lock file cannot be
    created or locked.
    Resource handling: the lock file descriptor is closed (releasing the
    ``flock``) when the block exits, however it exits.
    """
    with _registry:
        local = _locks.setdefault((os.path.realpath(root), tier), threading.Lock())
    with local:
        path = lock_path(root, tier)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"{path}: cannot open the fence lock: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise StorageError(f"{path}: cannot lock the fence: {exc}") from exc
            yield
        finally:
            os.close(fd)


def install_write_permit(root: Path, permit: WritePermit) -> Callable[[], None]:
    """Make ``permit`` decide, for every write under ``root`` in this process; returns the undo.

    One permit per root: installing a second replaces the first (the undo
    then removes only its own).
    """
    key = os.path.realpath(root)
    with _registry:
        _permits[key] = permit

    def remove() -> None:
        with _registry:
            if _permits.get(key) is permit:
                del _permits[key]

    return remove


def check_write_permit(root: Path, tier: str) -> None:
    """Refuse with :class:`WriteRefusedError` when ``root``'s permit says no for ``tier``.

    No permit installed (a tool working on the root): nothing to refuse.
    """
    with _registry:
        permit = _permits.get(os.path.realpath(root))
    if permit is None:
        return
    refusal = permit(tier)
    if refusal is not None:
        reason, detail = refusal
        raise WriteRefusedError(f"write to {tier} refused ({reason}): {detail}", reason=reason)
