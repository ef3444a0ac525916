"""File store: learn newer epochs from peers and replay their transitions locally.

With the file state store every region keeps its own copy of the roles, so a
promotion made elsewhere reaches this region either by the peer's notify or by
the prober reading the peer's ``/v1/status``. Either way the newer epochs are
*replayed* here, transition by transition with their original times, so every
region's history agrees; a state that cannot be replayed is a conflict for an
operator, never a guess.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from cryptorun_daemon.config import ACTIVE_PASSIVE_TIERS
from cryptorun_daemon.errors import ConflictError, StateStoreError
from cryptorun_daemon.failover.roles import TierState, state_from_status
from cryptorun_daemon.failover.store import StateStore

log = structlog.get_logger("cryptorun.failover")


class PeerAdoption:
    """Replays a peer's newer transitions into the local store and the component's cache.

    Invariant: adoptions run one at a time (one lock), so two peers reporting
    the same promotion replay it once.
    """

    def __init__(
        self,
        *,
        region: str,
        store: Callable[[], StateStore],
        current: Callable[[str], TierState | None],
        apply: Callable[[TierState], None],
        snapshot_seen: Callable[[], bool],
        note_problem: Callable[[str, str], None],
        clear_problem: Callable[[str], object],
    ) -> None:
        self.region = region
        self._store = store
        self._current = current
        self._apply = apply
        self._snapshot_seen = snapshot_seen
        self._note_problem = note_problem
        self._clear_problem = clear_problem
        self._lock = asyncio.Lock()

    async def adopt(self, remote: TierState, *, source: str) -> bool:
        """File store: replay ``remote``'s newer transitions locally; True when applied.

        Error handling: :class:`ConflictError` when the states diverge (same
        epoch, other primary; or a gap in the carried history).
        """
        store = self._store()
        async with self._lock:
            local = await store.get(remote.tier)
            if remote.epoch <= local.epoch:
                if remote.epoch == local.epoch and remote.primary != local.primary:
                    raise ConflictError(
                        f"tier {remote.tier}: divergent state at epoch {local.epoch}: "
                        f"{source} says primary {remote.primary}, {self.region} says "
                        f"{local.primary}; reconcile by hand (docs/FAILOVER.md)"
                    )
                return False
            missing = [t for t in remote.history if t.epoch > local.epoch]
            if [t.epoch for t in missing] != list(range(local.epoch + 1, remote.epoch + 1)):
                raise ConflictError(
                    f"tier {remote.tier}: cannot replay epochs {local.epoch + 1}..{remote.epoch} "
                    f"from {source}: its history does not cover them"
                )
            for transition in missing:
                if transition.demoted is None:
                    raise ConflictError(
                        f"tier {remote.tier}: {source}'s history has a "
                        f"bootstrap at epoch {transition.epoch}"
                    )
                # The original time, not now: fencing compares seal times with it.
                local = await store.promote(
                    remote.tier,
                    transition.promoted,
                    transition.demoted,
                    transition.epoch - 1,
                    at=transition.at,
                )
            log.warning(
                "adopted_peer_state",
                tier=remote.tier,
                source=source,
                primary=local.primary,
                epoch=local.epoch,
            )
        self._clear_problem(remote.tier)
        self._apply(local)
        return True

    async def learn_from_status(self, peer: str, doc: Any, trusted: bool) -> bool:
        """Adopt what is newer; answer whether every tier was compared.

        A peer that is not ready yet may not have loaded its own roles, so
        its answer does not count as a comparison (a ready peer without a
        tier simply takes no part in it). An untrusted answer (plaintext
        across a network) is never adopted: a newer epoch in it leaves the
        tier unconfirmed until the peer's notification (which needs the
        peer credential) or an https probe brings it.
        """
        failover = doc.get("failover") if isinstance(doc, dict) else None
        compared = isinstance(failover, dict) and failover.get("ready") is True
        if not self._snapshot_seen():
            return False
        for tier in ACTIVE_PASSIVE_TIERS:
            remote = state_from_status(doc, tier)
            local = self._current(tier)
            if (
                remote is None
                or local is None
                or remote.epoch < local.epoch
                or (remote.epoch == local.epoch and remote.primary == local.primary)
            ):
                continue
            if not trusted:
                compared = False
                self._note_problem(
                    tier,
                    f"{peer} reports epoch {remote.epoch} over plaintext; not adopted "
                    "(waiting for its notification; use https:// peers)",
                )
                continue
            try:
                await self.adopt(remote, source=peer)
            except (ConflictError, StateStoreError) as exc:
                compared = False
                self._note_problem(tier, f"cannot adopt {peer}'s state: {exc}")
        return compared
