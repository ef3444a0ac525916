"""The ``--object-store`` steps of a demo run: archive a cold day, last cold pass, bucket tally.

The runner calls these around its own steps when the demo runs with
``--object-store`` (docs/DEMO.md#--object-store): right after start
:meth:`BucketSteps.archive_cold` writes yesterday's cold partitions at the
primary and seals them through the seal endpoint (demo/archive.py); at the
end :meth:`BucketSteps.final_cold_sync` asks the replica for a last cold
pass and :meth:`BucketSteps.report` prints what each region's bucket holds
sealed, once both hold the archived day.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptorun_daemon.demo.archive import seal_through_api, write_archive
from cryptorun_daemon.demo.configs import PRIMARY, REGIONS, REPLICA, SYMBOLS, DemoLayout
from cryptorun_daemon.demo.object_store import BucketCount, count_sealed
from cryptorun_daemon.demo.processes import DemoError
from cryptorun_daemon.demo.summary import AdminReader
from cryptorun_daemon.errors import CryptorunError
from cryptorun_daemon.storage.layout import SUCCESS_MARKER, PartitionKey


class BucketSteps:
    """What ``--object-store`` adds to one demo run (see the module docstring)."""

    def __init__(
        self,
        layout: DemoLayout,
        reader: AdminReader,
        say: Callable[[str], None],
        stop: Callable[[], bool],
    ) -> None:
        if layout.object_store is None:
            raise ValueError("BucketSteps needs a layout with an object store")
        self.layout = layout
        self.endpoint = layout.object_store
        self.reader = reader
        self.say = say
        self.stop = stop
        #: Partition paths (below ``cold/``) archived and sealed at the primary.
        self.archived: list[str] = []
        #: False when an archived cold partition is missing from a bucket.
        self.cold_complete = True

    def archive_cold(self, *, timeout: float) -> None:
        """Archive yesterday's cold partitions at the primary and seal them through the API.

        The demo acts as an operator's archiver (demo/archive.py): it writes the
        completed day's partitions under the primary's root, then seals them
        through ``POST /v1/partitions/seal``; replication and the buckets take
        it from there. Error handling: :class:`DemoError` when a seal is still
        refused after ``timeout`` seconds.
        """
        day = (datetime.now(UTC) - timedelta(days=1)).date()
        keys = write_archive(self.layout.storage_root(PRIMARY), day, SYMBOLS, origin=PRIMARY)
        url = f"{self.layout.admin_url(PRIMARY)}/v1/partitions/seal"

        def seal(key: PartitionKey) -> None:
            self.reader.json(url, body={"tier": "cold", "partition": key.relpath})

        try:
            sealed = seal_through_api(seal, keys, timeout=timeout, stop=self.stop)
        except OSError as exc:
            raise DemoError(f"{PRIMARY} refused the archiver's cold seal: {exc}") from exc
        self.archived = [key.relpath for key in sealed]
        self.say(
            f"  cold: archived {day} ({len(sealed)} daily partitions of simulated trades) "
            f"at {PRIMARY}, sealed through POST /v1/partitions/seal"
        )

    def final_cold_sync(self, *, timeout: float) -> None:
        """A last cold pass at the replica (the archived day); a failure is reported, not raised."""
        if not self.archived:
            return
        try:
            self.reader.json(
                f"{self.layout.admin_url(REPLICA)}/v1/replication/sync",
                body={"tier": "cold", "from": PRIMARY},
                timeout=timeout,
            )
        except (OSError, ValueError) as exc:
            self.say(f"  last cold replication pass failed: {exc}")

    def report(self, *, wait: float) -> None:
        """Print how many partitions each region's bucket holds sealed, per tier.

        Waits (up to ``wait`` seconds) until both buckets hold every archived
        cold partition: each region's object_store worker commits after its
        disk seal. Sets :attr:`cold_complete`.
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                counts = count_sealed(self.endpoint, REGIONS)
            except CryptorunError as exc:
                self.say(f"  could not list the buckets: {exc}")
                self.cold_complete = not self.archived
                return
            self.cold_complete = cold_in_every_bucket(counts, len(self.archived))
            if self.cold_complete or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        if not self.cold_complete:
            self.say(f"  NOT every archived cold partition reached both buckets: {self.archived}")
        for count in counts:
            self.say(
                f"  {count.region:<10}  {count.sealed} {count.tier} partitions sealed "
                f"in {count.url}"
            )

    def disk_tally(self) -> None:
        """One line: the archived cold partitions sealed at the primary and held by the replica."""
        if not self.archived:
            return
        replica_root = self.layout.storage_root(REPLICA)
        held = sum((replica_root / "cold" / p / SUCCESS_MARKER).is_file() for p in self.archived)
        self.say(
            f"  {PRIMARY:<10}  {len(self.archived)} cold partitions (archived day) sealed "
            f"in data/{PRIMARY}/cold; {REPLICA}: {held} of {len(self.archived)} "
            f"in data/{REPLICA}/cold"
        )


def cold_in_every_bucket(counts: list[BucketCount], archived: int) -> bool:
    """Whether every region's bucket holds at least the ``archived`` cold partitions."""
    return all(c.sealed >= archived for c in counts if c.tier == "cold")
