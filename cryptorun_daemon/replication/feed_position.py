"""Where a replica stands in its source's change feed, kept durably under ``_state/``.

``{root}/_state/feed_position/{tier}.{source}.json`` holds the source's feed
id and the last position whose changes are applied here, written atomically
(temp, fsync, rename, fsync dir) after every page. ``repair_due`` is set while
partitions of an applied page failed and are being retried: after a restart
the link runs anti-entropy first, so they are found again instead of being
forgotten with the in-memory retry set.

A missing or unreadable file means "no position": the link repairs by digest
and starts from the head it was given, never from a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.config import Tier
from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.storage.layout import check_segment


@dataclass(frozen=True)
class FeedPosition:
    """A position in one incarnation (``feed_id``) of a source's change feed."""

    feed_id: str
    position: int
    repair_due: bool = False


class PositionStore:
    """The durable position of one (tier, source) link. Blocking; call from a thread."""

    def __init__(self, root: Path, tier: Tier, source: str) -> None:
        check_segment("region", source)
        self.path = root / "_state" / "feed_position" / f"{tier}.{source}.json"

    def load(self) -> FeedPosition | None:
        try:
            data = json.loads(self.path.read_bytes())
            return FeedPosition(
                str(data["feed_id"]), int(data["position"]), bool(data.get("repair_due", False))
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, position: FeedPosition) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "feed_id": position.feed_id,
            "position": position.position,
            "repair_due": position.repair_due,
        }
        atomic_write_bytes(self.path, json.dumps(doc, sort_keys=True).encode() + b"\n")
