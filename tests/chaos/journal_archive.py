"""Keeps a copy of every rolled hot journal segment, so the checker sees records the sealer trimmed.

The daemons run with realistic journal segments (:data:`~tests.chaos.cluster.SEGMENT_BYTES`):
segments roll, and the sealer deletes a segment once every window its records
were staged for is sealed (a replica: once warm replication delivered those
windows). ``hot.complete`` is judged over *every* record a region ever
journaled, so while the run goes on this archiver copies each rolled segment
(every segment but the newest) of every region, from the root namespace, to::

    OUT/journal-archive/REGION/<index>.jsonl

It copies a segment again whenever its size or modification time changed
(journal recovery may cut a torn tail), so the copy is the segment as it was
last seen before the sealer removed it. The checker reads a region's journal
as the segments left in its storage root plus the archived copies of the
indexes no longer there; an index still present is always read from the root.

Nothing is written inside a storage root or on the regions' tmpfs mounts (the
copies go to the run directory), so ``fs.confined`` and the ENOSPC faults are
unaffected. A segment trimmed before the archiver saw it (a segment that rolled
and was trimmed within one poll) is not lost to the checker's judgement: the
checker then applies its trimmed-record rule to the records it cannot see
(``tests/chaos/checker.py``).

Resource handling: no file stays open between polls; the loop runs until its
stop event is set. Error handling: a segment deleted while it is being copied
is skipped (the previous copy, if any, stays); any other OSError is counted in
:attr:`JournalArchiver.errors` and the loop goes on.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

INTERVAL = 0.5
ARCHIVE_DIR = "journal-archive"
SEGMENT_GLOB = "*.jsonl"


def journal_directory(storage_root: Path) -> Path:
    """Where a region keeps its hot journal segments."""
    return storage_root / "_state" / "hot" / "journal"


class JournalArchiver:
    """Copies rolled journal segments of each region's storage root into the run directory."""

    def __init__(self, roots: dict[str, Path], out: Path) -> None:
        self.roots = roots
        self.out = out / ARCHIVE_DIR
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}
        self.copied = 0
        self.errors = 0

    def poll_once(self) -> None:
        """Copy every rolled segment that is new or changed since the last poll."""
        for region, root in self.roots.items():
            directory = journal_directory(root)
            try:
                segments = sorted(directory.glob(SEGMENT_GLOB))
            except OSError:
                self.errors += 1
                continue
            for segment in segments[:-1]:  # the newest one is still being written
                self._copy(region, segment)

    def _copy(self, region: str, segment: Path) -> None:
        try:
            stat = segment.stat()
        except FileNotFoundError:
            return
        key, stamp = (region, segment.name), (stat.st_size, stat.st_mtime_ns)
        if self.seen.get(key) == stamp:
            return
        target = self.out / region / segment.name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{segment.name}.partial")
        try:
            shutil.copyfile(segment, partial)
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            return  # trimmed while copying: the previous copy (if any) stays
        except OSError:
            self.errors += 1
            partial.unlink(missing_ok=True)
            return
        partial.replace(target)
        self.seen[key] = stamp
        self.copied += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every :data:`INTERVAL` seconds until ``stop`` is set (one last poll then)."""
        while not stop.is_set():
            await asyncio.to_thread(self.poll_once)
            try:
                await asyncio.wait_for(stop.wait(), INTERVAL)
            except TimeoutError:
                pass
        await asyncio.to_thread(self.poll_once)
