"""The persistent fence: which region may write a tier, checked where data is written.

``{storage.root}/_state/fence/{tier}.json`` holds, per active-passive tier,
the highest epoch this storage root has seen, its primary, and the span of
every known epoch (who was primary, from when until the next promotion)::

    {"version": 1, "tier": "warm", "epoch": 2, "primary": "us-east",
     "updated_at": "2025-09-01T10:00:00Z",
     "epochs": [
         {"epoch": 1, "primary": "eu-central", "from": "...", "until": "2025-09-01T10:00:00Z"},
         {"epoch": 2, "primary": "us-east", "from": "2025-09-01T10:00:00Z", "until": null}]}

The failover component advances it on every state it learns (it only ever
moves forward); storage reads it at the moment of every write, so the check
holds for every writer that shares the root — the daemon's hot sealer, the
replication executor and the ``cryptorun partitions seal`` CLI alike:

- **seal**: only the primary of the fence's epoch, stamping exactly that
  epoch, may seal (:func:`check_seal`, :class:`~cryptorun_daemon.errors.FencedError`);
- **apply**: a replica refuses a manifest that its own epoch history proves
  was written by a fenced writer (:meth:`Fence.classify` → ``divergent``);
- **rejoin**: the same classification tells an old primary which of its own
  partitions were sealed after it lost primacy (divergent, moved aside under
  ``{tier}/_divergent/epoch=E/``) and which are legitimate deltas of its old
  epoch (pulled by the new primary).

Clock assumption: an epoch ends at the ``at`` of the promotion that replaced
it, stamped by the clock of whoever performed the promotion, and manifests
carry ``sealed_at`` from the writer's clock. Classification compares the two,
so regions must keep their clocks in sync (NTP); a partition sealed within
the clock skew of the promotion may be classified on the wrong side. Either
way nothing is lost: a divergent partition is moved aside, never deleted.

No fence file (a fresh root, or a tool working on a copy) means nothing to
enforce: the daemon writes the file as soon as it knows the tier's state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from cryptorun_daemon.config import is_active_passive
from cryptorun_daemon.errors import FencedError, StorageError
from cryptorun_daemon.storage.atomic import atomic_write_bytes, move_aside
from cryptorun_daemon.storage.fence_lock import FENCE_DIR, fence_lock
from cryptorun_daemon.storage.layout import DIVERGENT_DIR, quarantine_dir
from cryptorun_daemon.storage.manifest import Manifest
from cryptorun_daemon.storage.quarantine_record import write_quarantine_record
from cryptorun_daemon.timefmt import format_rfc3339, parse_rfc3339

FENCE_VERSION: Final = 1

#: ``current``: written by the primary of the current (or a newer) epoch;
#: ``history``: written by the primary of an older epoch before it ended;
#: ``divergent``: written by a region that was not primary at that epoch, or
#: after its epoch had ended (a fenced writer).
Verdict = Literal["current", "history", "divergent"]


@dataclass(frozen=True)
class EpochSpan:
    """Epoch ``epoch`` had ``primary`` from ``started`` until ``ended`` (``None``: current)."""

    epoch: int
    primary: str
    started: datetime
    ended: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "primary": self.primary,
            "from": format_rfc3339(self.started),
            "until": format_rfc3339(self.ended) if self.ended is not None else None,
        }


@dataclass(frozen=True)
class Fence:
    """The highest epoch a storage root has seen for ``tier``, with its epoch history."""

    tier: str
    epoch: int
    primary: str
    updated_at: datetime
    epochs: tuple[EpochSpan, ...] = ()

    # --- questions ---------------------------------------------------------------

    def span(self, epoch: int) -> EpochSpan | None:
        return next((s for s in self.epochs if s.epoch == epoch), None)

    def ended_at(self, epoch: int) -> datetime | None:
        """When ``epoch`` ended (the promotion to the next epoch); ``None`` if current/unknown."""
        span = self.span(epoch)
        return span.ended if span is not None else None

    def check_writer(self, region: str, epoch: int, *, operation: str = "seal") -> None:
        """Refuse ``operation`` by ``region`` at ``epoch`` unless it is the current primary.

        Error handling: raises :class:`FencedError` (409 ``fenced``) naming the
        current primary and epoch.
        """
        if region == self.primary and epoch == self.epoch:
            return
        if region != self.primary:
            why = f"{region} is not the primary of {self.tier}"
        elif epoch < self.epoch:
            why = f"epoch {epoch} is older than the fence"
        else:
            why = f"epoch {epoch} does not exist yet"
        raise FencedError(
            f"{operation} refused: {why}; the current primary of {self.tier} is "
            f"{self.primary} at epoch {self.epoch}"
        )

    def classify(self, manifest: Manifest) -> Verdict:
        """Whether ``manifest`` was written by a legitimate primary, judged by this history.

        An epoch missing from the history (trimmed, or newer than this fence)
        is given the benefit of the doubt: only what the history proves wrong
        is ``divergent``.
        """
        return self.judge(manifest.epoch, manifest.writer_region, manifest.sealed_at)

    def judge(self, epoch: int, writer_region: str, sealed_at: datetime) -> Verdict:
        """:meth:`classify` from the three manifest fields it looks at."""
        if epoch >= self.epoch:
            if epoch == self.epoch and writer_region != self.primary:
                return "divergent"
            return "current"
        span = self.span(epoch)
        if span is None:
            return "history"
        if writer_region != span.primary:
            return "divergent"
        if span.ended is not None and sealed_at >= span.ended:
            return "divergent"
        return "history"

    # --- JSON --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FENCE_VERSION,
            "tier": self.tier,
            "epoch": self.epoch,
            "primary": self.primary,
            "updated_at": format_rfc3339(self.updated_at),
            "epochs": [s.to_json() for s in self.epochs],
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str = "fence") -> Fence:
        """Error handling: :class:`StorageError` naming ``where`` and the bad field."""
        try:
            if not isinstance(data, dict) or data.get("version") != FENCE_VERSION:
                raise ValueError(f"not a version {FENCE_VERSION} fence document")
            epochs = tuple(
                EpochSpan(
                    epoch=int(item["epoch"]),
                    primary=str(item["primary"]),
                    started=parse_rfc3339(str(item["from"])),
                    ended=None if item.get("until") is None else parse_rfc3339(str(item["until"])),
                )
                for item in data.get("epochs", [])
            )
            epoch = int(data["epoch"])
            if epoch < 1:
                raise ValueError("epoch must be >= 1")
            return cls(
                tier=str(data["tier"]),
                epoch=epoch,
                primary=str(data["primary"]),
                updated_at=parse_rfc3339(str(data["updated_at"])),
                epochs=epochs,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"{where}: invalid fence: {exc}") from exc


def fence_path(root: Path, tier: str) -> Path:
    return root / FENCE_DIR / f"{tier}.json"


def read_fence(root: Path, tier: str) -> Fence | None:
    """The fence of ``tier`` under ``root``; ``None`` when none was written yet.

    Error handling: an unreadable or corrupt fence raises :class:`StorageError`;
    a write must never proceed on a fence it cannot read.
    """
    path = fence_path(root, tier)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"{path}: cannot read the fence: {exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StorageError(f"{path}: corrupt fence JSON: {exc}") from exc
    return Fence.from_json(data, where=str(path))


def spans_from_transitions(
    transitions: Iterable[tuple[int, datetime, str]],
) -> tuple[EpochSpan, ...]:
    """Epoch spans from ``(epoch, at, promoted)`` transitions in epoch order.

    Each epoch ends when the next known one starts, but only if that next
    epoch directly follows it (a gap means the history is incomplete).
    """
    items = sorted(transitions)
    spans = []
    for index, (epoch, at, primary) in enumerate(items):
        following = items[index + 1] if index + 1 < len(items) else None
        ended = following[1] if following is not None and following[0] == epoch + 1 else None
        spans.append(EpochSpan(epoch, primary, at, ended))
    return tuple(spans)


def advance_fence(
    root: Path,
    tier: str,
    *,
    epoch: int,
    primary: str,
    updated_at: datetime,
    transitions: Sequence[tuple[int, datetime, str]],
) -> Fence:
    """Record a tier state in the fence if it is not older than the stored one; return the fence.

    Only forward: a lower epoch than stored leaves the file alone (a stale
    peer or a stale cache can never lower it). Epoch spans the stored fence
    knows but ``transitions`` no longer carry (history trimmed) are kept, and
    for an epoch known from both, the earlier start wins.

    Runs under the tier's fence lock (:mod:`~cryptorun_daemon.storage.fence_lock`),
    so it waits for a seal or commit that is between its last fence check and
    its rename: a promotion is never recorded in the middle of a write.

    Blocking (atomic write with fsync, a few milliseconds, plus any wait for
    the lock).
    Error handling: :class:`StorageError` when the fence cannot be read or written.
    """
    with fence_lock(root, tier):
        return _advance_locked(
            root,
            tier,
            epoch=epoch,
            primary=primary,
            updated_at=updated_at,
            transitions=transitions,
        )


def _advance_locked(
    root: Path,
    tier: str,
    *,
    epoch: int,
    primary: str,
    updated_at: datetime,
    transitions: Sequence[tuple[int, datetime, str]],
) -> Fence:
    current = read_fence(root, tier)
    if current is not None and epoch < current.epoch:
        return current
    known = {s.epoch: (s.epoch, s.started, s.primary) for s in current.epochs} if current else {}
    for item in transitions:
        held = known.get(item[0])
        # The earliest record of an epoch's start wins: a replayed promotion can
        # only be stamped later than the original, never earlier.
        if held is None or item[1] < held[1]:
            known[item[0]] = item
    fence = Fence(
        tier=tier,
        epoch=epoch,
        primary=primary,
        updated_at=updated_at,
        epochs=spans_from_transitions(known.values()),
    )
    if fence == current:
        return fence
    path = fence_path(root, tier)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(fence.to_json(), indent=2) + "\n").encode())
    except OSError as exc:
        raise StorageError(f"{path}: cannot write the fence: {exc}") from exc
    return fence


def check_seal(root: Path, tier: str, region: str, epoch: int) -> None:
    """The storage-level seal fence: refuse unless ``region`` is primary at ``epoch``.

    Hot (active-active) is never fenced; a root without a fence file is not
    either (nothing known to enforce).

    Error handling: :class:`FencedError` when refused; :class:`StorageError`
    when the fence exists but cannot be read.
    """
    if not is_active_passive(tier):
        return
    fence = read_fence(root, tier)
    if fence is not None:
        fence.check_writer(region, epoch, operation="seal")


# --- setting data aside ---------------------------------------------------------------


def divergent_destination(root: Path, manifest: Manifest) -> Path:
    """``{root}/{tier}/_divergent/epoch={E}/{partition}``: where a fenced writer's data goes."""
    return root / manifest.tier / DIVERGENT_DIR / f"epoch={manifest.epoch}" / manifest.partition


def move_divergent(root: Path, directory: Path, manifest: Manifest) -> Path:
    """Move a whole divergent partition directory aside (never deleted); return where it went.

    Blocking. A second divergent copy of the same partition and epoch gets a
    numeric suffix rather than overwriting the first.
    """
    return move_aside(directory, divergent_destination(root, manifest))


def quarantine_fenced_manifest(
    root: Path,
    *,
    region: str,
    manifest: Manifest,
    source: str,
    reason: str,
) -> Path | None:
    """Keep a refused (fenced) manifest under ``_quarantine/{tier}/{region}/{partition}/``.

    The manifest bytes go to ``epoch{E}-{hash}.manifest.json`` with an
    ``.error.json`` record of kind ``fenced`` beside it (written by
    :func:`~cryptorun_daemon.storage.quarantine_record.write_quarantine_record`,
    counted by the status quarantine counts like any quarantined file).
    Idempotent: returns ``None`` when this exact manifest was already
    quarantined, so a source that keeps listing it is counted once.
    """
    folder = quarantine_dir(root, manifest.tier, region, manifest.key)
    name = f"epoch{manifest.epoch}-{manifest.content_hash.rsplit(':', 1)[-1][:16]}.manifest.json"
    target = folder / name
    if target.exists():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, manifest.to_bytes())
    record = {
        "kind": "fenced",
        "tier": manifest.tier,
        "region": region,
        "source": source,
        "partition": manifest.partition,
        "epoch": manifest.epoch,
        "writer_region": manifest.writer_region,
        "sealed_at": format_rfc3339(manifest.sealed_at),
        "reason": reason,
        "quarantined_at": format_rfc3339(datetime.now(UTC)),
    }
    write_quarantine_record(target, record)
    return target


def storage_root_of(partition_dir: Path, depth: int) -> Path:
    """The storage root above a partition directory ``depth`` levels below it (tier included)."""
    resolved = Path(os.path.realpath(partition_dir))
    return resolved.parents[depth - 1]
