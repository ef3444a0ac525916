"""Versions set aside under ``{root}/_superseded/``: where they go, what they are called.

A sealed partition is never changed in place without its previous version
being kept: replicas move a superseded copy (files and manifest) to
``{root}/_superseded/{tier}/{partition}/{stamp}-{label}/``
(:mod:`cryptorun_daemon.replication.commit`), and a writer re-sealing a
partition in place (a late fill adds a file) keeps the previous manifest
there (:func:`keep_superseded_manifest`) — its files are all still in the
live partition, because sealed files are never rewritten, only added to.
The research reader's ``as_of`` reads exactly these versions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUPERSEDED_DIR
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.timefmt import format_compact


def superseded_version_dir(root: Path, held: Manifest, *, now: datetime | None = None) -> Path:
    """``{root}/_superseded/{tier}/{partition}/{stamp}-epoch{E}-{hash16}`` for ``held``.

    The same name :mod:`cryptorun_daemon.replication.commit` gives a moved copy,
    so one folder lists every earlier version of a partition, oldest first.
    """
    stamp = format_compact(now or datetime.now(UTC), precision="microseconds")
    label = f"epoch{held.epoch}-{held.content_hash[-16:]}"
    return root / SUPERSEDED_DIR / held.tier / held.partition / f"{stamp}-{label}"


def keep_superseded_manifest(root: Path, held: Manifest) -> Path:
    """Keep ``held`` (a manifest about to be replaced by a re-seal) as a superseded version.

    Writes only the manifest: every file it lists stays in the live partition
    (a re-seal in place only adds files). Returns the version folder.
    Blocking. Error handling: :class:`OSError` when the write fails (the
    re-seal then fails before anything is replaced).
    """
    folder = superseded_version_dir(root, held)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / MANIFEST_NAME, held.to_bytes())
    return folder
