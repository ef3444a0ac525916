"""Automatic failover's guards, and why the last check of each tier did not promote.

The failover component (``failover:auto`` worker, etcd only) asks
:meth:`AutoFailover.check` about each tier every ``lease_ttl / 4`` seconds.
Each check ends in one :class:`AutoDecision`: ``skip`` with the code of the
first guard that held, or ``promote``. After a promotion attempt the component
records ``promote`` (it won) or ``lost`` (the CAS chose another region).

The reason codes (stable, documented in docs/FAILOVER.md):

=========================  ===================================================
``disabled``               ``[state] auto_failover`` is off
``primary_alive``          the primary holds its lease
``primary_never_seen``     this daemon has not seen the primary alive since it
                           started (a cluster restart must not trigger it)
``own_lease_missing``      this region does not hold its own lease (it cannot
                           reach etcd, so it must not act)
``primary_absent_briefly`` the primary's lease is gone, but for less than a
                           further ``lease_ttl`` as seen here
``min_interval``           the tier's last transition is more recent than
                           ``auto_failover_min_interval``
``no_candidate``           no alive region other than the primary
``not_first_candidate``    another alive region comes first in sorted order and
                           is the one that promotes
``primary_lease_expired``  (``promote``) every guard passed: this region promotes
``lost_race``              (``lost``) another region's promotion won the CAS
=========================  ===================================================

Each change of a tier's reason code is logged once (``auto_failover_skipped``
for a skip, at info level), not on every tick; :meth:`AutoFailover.status`
shows the current one in ``/v1/status`` as ``tiers.<tier>.auto_failover``.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import structlog

from cryptorun_daemon.config import StateConfig
from cryptorun_daemon.failover.roles import TierState
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.failover")

Decision = Literal["skip", "promote", "lost"]
AutoReason = Literal[
    "disabled",
    "primary_alive",
    "primary_never_seen",
    "own_lease_missing",
    "primary_absent_briefly",
    "min_interval",
    "no_candidate",
    "not_first_candidate",
    "primary_lease_expired",
    "lost_race",
]

DISABLED_DETAIL: Final = "[state] auto_failover is off: only an operator promotes"


@dataclass(frozen=True)
class AutoDecision:
    """The outcome of one check of one tier: what, which guard (``reason``), and why in words."""

    decision: Decision
    reason: AutoReason
    detail: str


@dataclass(frozen=True)
class _Recorded:
    decision: AutoDecision
    since: datetime


class AutoFailover:
    """The guards of automatic failover for one region, and the last decision per tier.

    Pure bookkeeping: no I/O, no tasks. The caller supplies the live facts
    (tier state, alive regions) and the clock readings.
    """

    def __init__(self, region: str, config: StateConfig) -> None:
        self.region = region
        self.config = config
        # Invariant: a tier is here only while its primary is absent (lease gone)
        # and every earlier guard passes; the value is the monotonic time this
        # daemon first saw it so. Any check that fails those guards removes it,
        # so the grace period restarts from zero after the primary comes back.
        self._absent_since: dict[str, float] = {}
        self._last: dict[str, _Recorded] = {}

    def check(
        self,
        state: TierState,
        *,
        alive: Set[str],
        ever_alive: Set[str],
        now: datetime,
        monotonic: float,
    ) -> AutoDecision:
        """Apply the guards in order to ``state``; the first that holds is the reason.

        Records the decision (see :meth:`record`) before returning it.
        """
        decision = self._evaluate(state, alive, ever_alive, now, monotonic)
        self.record(state.tier, decision, now=now)
        return decision

    def record(self, tier: str, decision: AutoDecision, *, now: datetime) -> None:
        """Remember ``decision`` for ``tier``; log it when its reason code changed."""
        last = self._last.get(tier)
        if last is not None and last.decision.reason == decision.reason:
            # Same guard as before: keep "since", refresh the words (they carry numbers).
            self._last[tier] = _Recorded(decision, last.since)
            return
        self._last[tier] = _Recorded(decision, now)
        if decision.decision == "skip":
            log.info(
                "auto_failover_skipped",
                tier=tier,
                reason=decision.reason,
                detail=decision.detail,
            )

    def status(self, tier: str) -> dict[str, Any]:
        """``tiers.<tier>.auto_failover`` in ``/v1/status``."""
        if not self.config.auto_failover:
            return {
                "enabled": False,
                "last_decision": None,
                "reason": "disabled",
                "detail": DISABLED_DETAIL,
                "since": None,
            }
        last = self._last.get(tier)
        return {
            "enabled": True,
            "last_decision": last.decision.decision if last else None,
            "reason": last.decision.reason if last else None,
            "detail": last.decision.detail if last else None,
            "since": format_rfc3339(last.since) if last else None,
        }

    def _evaluate(
        self,
        state: TierState,
        alive: Set[str],
        ever_alive: Set[str],
        now: datetime,
        monotonic: float,
    ) -> AutoDecision:
        tier, primary, cfg = state.tier, state.primary, self.config
        if not cfg.auto_failover:
            return _skip("disabled", DISABLED_DETAIL)
        if primary in alive:
            self._absent_since.pop(tier, None)
            return _skip("primary_alive", f"the primary {primary} holds its lease")
        if primary not in ever_alive:
            self._absent_since.pop(tier, None)
            return _skip(
                "primary_never_seen",
                f"{self.region} has not seen the primary {primary} alive since it started",
            )
        if self.region not in alive:
            self._absent_since.pop(tier, None)
            return _skip(
                "own_lease_missing",
                f"{self.region} does not hold its own lease (etcd unreachable?)",
            )
        absent = monotonic - self._absent_since.setdefault(tier, monotonic)
        if absent < cfg.lease_ttl:
            return _skip(
                "primary_absent_briefly",
                f"the primary {primary}'s lease is gone for {absent:.1f} s here, "
                f"less than lease_ttl ({cfg.lease_ttl:g} s)",
            )
        age = (now - state.updated_at).total_seconds()
        if age < cfg.auto_failover_min_interval:
            return _skip(
                "min_interval",
                f"the last transition (epoch {state.epoch}) was {age:.0f} s ago, less than "
                f"auto_failover_min_interval ({cfg.auto_failover_min_interval:g} s)",
            )
        candidates = sorted(set(alive) - {primary})
        if not candidates:
            return _skip("no_candidate", "no alive region other than the primary")
        if candidates[0] != self.region:
            return _skip(
                "not_first_candidate",
                f"{candidates[0]} is the first alive candidate in sorted order and promotes",
            )
        return AutoDecision(
            "promote",
            "primary_lease_expired",
            f"the primary {primary}'s lease is gone for {absent:.1f} s: "
            f"{self.region} promotes itself at epoch {state.epoch + 1}",
        )


def _skip(reason: AutoReason, detail: str) -> AutoDecision:
    return AutoDecision("skip", reason, detail)
