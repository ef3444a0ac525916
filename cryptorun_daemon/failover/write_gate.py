"""Whether this region, holding a tier as primary, may write it now — and why not.

Every seal and replica commit asks at its commit point (through the failover
component, which also installs :meth:`WriteGate.lease_refusal` as the storage
root's write permit). The gate reads memory and the clock only, never the
network, so it is safe to call from worker threads under the fence lock.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptorun_daemon.config import Config
from cryptorun_daemon.failover.roles import TierState
from cryptorun_daemon.failover.store import StateStore
from cryptorun_daemon.runtime.clock import Clock

#: ``(reason, detail)``: a stable reason code and a sentence for people.
Refusal = tuple[str, str]


class WriteGate:
    """The write refusal rules for the tiers this region holds as primary.

    Invariant: it owns no state; everything comes from the failover
    component's callables, so its answer is always the component's current
    view (states, store, readiness, the epochs loaded at start-up, peers).
    """

    def __init__(
        self,
        *,
        region: str,
        config: Config,
        clock: Clock,
        state: Callable[[str], TierState | None],
        store: Callable[[], StateStore | None],
        not_ready: Callable[[], list[str]],
        loaded_epoch: Callable[[str], int | None],
        unconfirmed_peers: Callable[[], list[str]],
    ) -> None:
        self.region = region
        self._config = config
        self._clock = clock
        self._state = state
        self._store = store
        self._not_ready = not_ready
        self._loaded_epoch = loaded_epoch
        self._unconfirmed_peers = unconfirmed_peers

    def reason(self, tier: str) -> Refusal | None:
        """``(reason, detail)`` when this region holds ``tier`` as primary but may not write it.

        Reasons, checked in this order:

        - ``not_ready``: no snapshot yet (or, file store, peers not compared);
        - ``state_store_unreachable`` / ``lease_expiring`` (etcd): see
          :meth:`lease_refusal`;
        - ``roles_unconfirmed`` (file store): there is no quorum, so the role
          loaded from the local file at start-up may be stale (a failover
          happened while this region was away). Until it has compared epochs
          with every peer, or seen it down for ``replication.peer_down_after``,
          the region trusts that role only after a newer epoch reached it
          since start-up (its own promotion through the API, or one adopted
          from a peer).

        Readiness does not wait for any of these: reads and replication go on.
        """
        state = self._state(tier)
        if state is None or state.primary != self.region:
            return None
        reasons = self._not_ready()
        if reasons:
            return "not_ready", "; ".join(reasons)
        lease = self.lease_refusal(tier)
        if lease is not None:
            return lease
        loaded = self._loaded_epoch(tier)
        if self._config.state.backend != "file" or (
            state.epoch > (loaded if loaded is not None else state.epoch)
        ):
            return None
        waiting = self._unconfirmed_peers()
        if not waiting:
            return None
        down_after = self._config.replication.peer_down_after
        return (
            "roles_unconfirmed",
            f"{self.region} has not confirmed its roles yet: epochs not compared with "
            f"{', '.join(waiting)}, which has not been down for peer_down_after "
            f"({down_after:g} s) either; the file state store has no quorum",
        )

    def lease_refusal(self, tier: str) -> Refusal | None:
        """etcd: refuse writing ``tier`` as primary unless this region's lease outlives the margin.

        A primary cut off from etcd cannot renew its lease; once the lease
        lapses, another region may be promoted (automatically or by an
        operator) without this one hearing of it. So a primary writes only
        while the lease it last renewed has more than
        ``state.write_safety_margin()`` seconds left, by the monotonic clock
        (see :class:`~cryptorun_daemon.failover.store.LeaseHealth`):
        ``state_store_unreachable`` when the latest renewal failed,
        ``lease_expiring`` otherwise (renewals late, or the lease lost).
        ``None`` for the file store, and for tiers this region is not primary of.

        Reads memory and the clock only: the storage write permit calls it
        from worker threads, under the fence lock, right before a rename.
        """
        store, state = self._store(), self._state(tier)
        if store is None or state is None or state.primary != self.region:
            return None
        health = store.lease_health(self.region)
        if health is None:
            return None
        margin = self._config.state.write_safety_margin()
        if health.expires_at is not None:
            left = health.expires_at - self._clock.monotonic()
            if left > margin:
                return None
            held = f"its lease has {max(left, 0.0):.1f} s left"
        else:
            held = "it holds no lease"
        if health.last_error is not None:
            return (
                "state_store_unreachable",
                f"{self.region} cannot renew its etcd lease ({health.last_error}) and {held} "
                f"(safety margin {margin:g} s): another region may be promoted meanwhile, so "
                "it stops writing until a renewal succeeds",
            )
        return (
            "lease_expiring",
            f"{self.region}'s etcd {held} (safety margin {margin:g} s): it stops writing "
            "until a heartbeat renews it",
        )
