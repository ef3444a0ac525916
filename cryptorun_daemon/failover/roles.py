"""Who is primary for which tier, and the fencing epoch that proves it.

Each active-passive tier (warm, cold) has exactly one primary region and an
**epoch**: a number that starts at 1 when the tier is bootstrapped and grows by
one on every promotion, never anything else. Storage stamps the epoch on every
sealed partition and manifest, so a writer that lost primacy can be told apart
from the current one (a fencing token, as in HDFS epochs). Hot (active-active)
has no primary; a region can instead be *drained* (taken out of serving).

This module is pure: values and the rules that move them forward. The state
stores (``store_file``, ``store_etcd``) persist these values and apply
:meth:`TierState.promoted` atomically; the admin API and CLI only read them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from cryptorun_daemon.config import (
    REGION_NAME_PATTERN,
    ActivePassiveTier,
    is_active_passive,
    is_region_name,
)
from cryptorun_daemon.errors import ConflictError, FencedError, StateStoreError, UsageError
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.timefmt import format_rfc3339, parse_rfc3339

Role = Literal["primary", "replica"]
TransitionKind = Literal["bootstrap", "promotion"]

# Enough to answer "what happened this week" in status output, small enough that
# the whole tier state stays one small JSON value (etcd keys, one file write).
HISTORY_LIMIT: Final = 32
SCHEMA_VERSION: Final = 1


# --- validation helpers -------------------------------------------------------


def require_active_passive(tier: str) -> ActivePassiveTier:
    """Return ``tier`` narrowed to warm/cold.

    Error handling: raises :class:`UsageError` for hot (it has no primary: use
    draining) and for names that are not tiers at all.
    """
    if is_active_passive(tier):
        return tier
    if tier == "hot":
        raise UsageError("tier hot is active-active and has no primary (drain a region instead)")
    raise UsageError(f"unknown tier {tier!r} (expected warm or cold)")


def require_region(region: str) -> str:
    """Return ``region`` if it matches :data:`~cryptorun_daemon.config.REGION_NAME_PATTERN`.

    Error handling: raises :class:`UsageError` naming the bad value.
    """
    if not is_region_name(region):
        raise UsageError(f"invalid region name {region!r} (expected {REGION_NAME_PATTERN})")
    return region


# --- values -----------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """One change of primary: at ``epoch``, ``promoted`` became primary.

    ``demoted`` is the previous primary, ``None`` for the bootstrap entry.
    """

    epoch: int
    at: datetime
    kind: TransitionKind
    promoted: str
    demoted: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "at": format_rfc3339(self.at),
            "kind": self.kind,
            "promoted": self.promoted,
            "demoted": self.demoted,
        }

    @classmethod
    def from_json(cls, data: Any) -> Transition:
        """Error handling: raises :class:`StateStoreError` naming the bad field."""
        obj = _object(data, "transition")
        kind = obj.get("kind")
        if kind not in ("bootstrap", "promotion"):
            raise StateStoreError(f"transition: kind must be bootstrap or promotion, got {kind!r}")
        demoted = obj.get("demoted")
        return cls(
            epoch=_epoch(obj.get("epoch"), "transition.epoch"),
            at=_timestamp(obj.get("at"), "transition.at"),
            kind=kind,
            promoted=_region(obj.get("promoted"), "transition.promoted"),
            demoted=None if demoted is None else _region(demoted, "transition.demoted"),
        )


@dataclass(frozen=True)
class TierState:
    """The primary and fencing epoch of one active-passive tier.

    Invariants (checked on construction and on load): ``epoch >= 1``; history
    epochs strictly increase and end at ``epoch``; at most
    :data:`HISTORY_LIMIT` entries, the oldest dropped first.
    """

    tier: ActivePassiveTier
    primary: str
    epoch: int
    updated_at: datetime
    history: tuple[Transition, ...] = ()

    def __post_init__(self) -> None:
        require_active_passive(self.tier)
        require_region(self.primary)
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 1:
            raise StateStoreError(f"tier {self.tier}: epoch must be an integer >= 1")
        if self.updated_at.tzinfo is None:
            raise StateStoreError(f"tier {self.tier}: updated_at must be timezone-aware")
        epochs = [t.epoch for t in self.history]
        if any(b <= a for a, b in itertools.pairwise(epochs)):
            raise StateStoreError(f"tier {self.tier}: history epochs must strictly increase")
        if epochs and epochs[-1] != self.epoch:
            raise StateStoreError(f"tier {self.tier}: last history epoch != current epoch")
        if len(self.history) > HISTORY_LIMIT:
            raise StateStoreError(f"tier {self.tier}: history longer than {HISTORY_LIMIT}")

    # --- transitions ------------------------------------------------------------

    @classmethod
    def bootstrap(cls, tier: str, primary: str, *, at: datetime) -> TierState:
        """The first state of a tier: ``primary`` (from the config rule) at epoch 1."""
        checked = require_active_passive(tier)
        require_region(primary)
        entry = Transition(epoch=1, at=at, kind="bootstrap", promoted=primary)
        return cls(tier=checked, primary=primary, epoch=1, updated_at=at, history=(entry,))

    def promoted(
        self,
        promote: str,
        demote: str,
        *,
        expected_epoch: int | None,
        at: datetime,
    ) -> TierState:
        """The state after promoting ``promote`` in place of ``demote``.

        This is the one rule both stores apply inside their compare-and-swap,
        so the file and etcd backends refuse exactly the same requests.

        ``expected_epoch`` is the epoch the caller based its decision on (what
        the operator saw in status); ``None`` skips that check, which is only
        safe for an operator acting on the live state.

        Error handling: :class:`UsageError` for malformed requests (bad region
        names, ``promote == demote``); :class:`ConflictError` when the request
        does not fit the current state (stale epoch, ``promote`` already
        primary, ``demote`` not the primary).
        """
        require_region(promote)
        require_region(demote)
        if promote == demote:
            raise UsageError(f"promote and demote are both {promote!r}")
        if expected_epoch is not None and expected_epoch != self.epoch:
            raise ConflictError(
                f"tier {self.tier}: stale epoch {expected_epoch}, current epoch is "
                f"{self.epoch} (primary {self.primary}); re-read status and retry"
            )
        if promote == self.primary:
            raise ConflictError(
                f"tier {self.tier}: {promote} is already primary at epoch {self.epoch}"
            )
        if demote != self.primary:
            raise ConflictError(
                f"tier {self.tier}: cannot demote {demote}, the primary at epoch "
                f"{self.epoch} is {self.primary}"
            )
        entry = Transition(
            epoch=self.epoch + 1, at=at, kind="promotion", promoted=promote, demoted=demote
        )
        return TierState(
            tier=self.tier,
            primary=promote,
            epoch=self.epoch + 1,
            updated_at=at,
            history=(*self.history, entry)[-HISTORY_LIMIT:],
        )

    # --- questions --------------------------------------------------------------

    def role_of(self, region: str) -> Role:
        return "primary" if region == self.primary else "replica"

    def check_writer(self, region: str, epoch: int) -> None:
        """Refuse a write by ``region`` stamped with ``epoch`` unless it is current.

        Storage calls this before sealing a partition or serving as a source:
        only the primary of the current epoch may do either.

        Error handling: raises :class:`FencedError` (409 ``fenced``).
        """
        if region != self.primary or epoch != self.epoch:
            raise FencedError(
                f"tier {self.tier}: {region} at epoch {epoch} is fenced; the current "
                f"primary is {self.primary} at epoch {self.epoch}"
            )

    # --- JSON -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "tier": self.tier,
            "primary": self.primary,
            "epoch": self.epoch,
            "updated_at": format_rfc3339(self.updated_at),
            "history": [t.to_json() for t in self.history],
        }

    @classmethod
    def from_json(cls, data: Any) -> TierState:
        """Rebuild a state written by :meth:`to_json`.

        Error handling: raises :class:`StateStoreError` naming the first bad
        field; a state store must never act on a half-understood value.
        """
        obj = _object(data, "tier state")
        version = obj.get("version")
        if version != SCHEMA_VERSION:
            raise StateStoreError(f"tier state: unsupported version {version!r}")
        tier = obj.get("tier")
        if not isinstance(tier, str) or not is_active_passive(tier):
            raise StateStoreError(f"tier state: tier must be warm or cold, got {tier!r}")
        history = obj.get("history")
        if not isinstance(history, list):
            raise StateStoreError("tier state: history must be a list")
        try:
            return cls(
                tier=tier,
                primary=_region(obj.get("primary"), "tier state.primary"),
                epoch=_epoch(obj.get("epoch"), "tier state.epoch"),
                updated_at=_timestamp(obj.get("updated_at"), "tier state.updated_at"),
                history=tuple(Transition.from_json(item) for item in history),
            )
        except UsageError as exc:  # a bad region name inside stored data
            raise StateStoreError(f"tier state: {exc}") from exc


@dataclass(frozen=True)
class Snapshot:
    """Everything a state store knows at one moment, as :meth:`StateStore.changes` yields it.

    ``tiers`` holds only initialised tiers. ``drained`` are regions taken out
    of serving for active-active tiers; ``alive`` are regions whose heartbeat
    (lease) has not expired.
    """

    tiers: Mapping[ActivePassiveTier, TierState] = field(default_factory=dict)
    drained: frozenset[str] = frozenset()
    alive: frozenset[str] = frozenset()

    def epochs(self) -> dict[str, int]:
        return {tier: state.epoch for tier, state in self.tiers.items()}

    def to_json(self) -> dict[str, Any]:
        """A JSON view for status output (tiers keyed by name, sets sorted)."""
        return {
            "tiers": {tier: self.tiers[tier].to_json() for tier in sorted(self.tiers)},
            "drained": sorted(self.drained),
            "alive": sorted(self.alive),
        }


def export_role_metrics(metrics: Metrics, state: TierState, regions: Iterable[str]) -> None:
    """Set ``cryptorun_region_role{tier,region}`` and ``cryptorun_failover_epoch{tier}``.

    ``regions`` is the bounded set from config (this region and its peers); the
    primary is included even if config does not know it, so the gauge never
    claims "no primary".
    """
    for region in sorted({*regions, state.primary}):
        metrics.region_role.labels(tier=state.tier, region=region).set(
            1 if region == state.primary else 0
        )
    metrics.failover_epoch.labels(tier=state.tier).set(state.epoch)


# --- field parsing ----------------------------------------------------------------


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise StateStoreError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _epoch(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StateStoreError(f"{what}: expected an integer >= 1, got {value!r}")
    return value


def _region(value: Any, what: str) -> str:
    if not is_region_name(value):
        raise StateStoreError(f"{what}: invalid region name {value!r}")
    return value


# --- status documents ---------------------------------------------------------------


def state_from_status(doc: Any, tier: str) -> TierState | None:
    """A peer's tier state rebuilt from its ``/v1/status`` (``None`` when absent or bad)."""
    try:
        info = doc["tiers"][tier]
        return TierState(
            tier=require_active_passive(tier),
            primary=info["primary"],
            epoch=info["epoch"],
            updated_at=parse_rfc3339(info["updated_at"]),
            history=tuple(Transition.from_json(t) for t in info["history"]),
        )
    except (KeyError, TypeError, ValueError, StateStoreError, UsageError):
        return None


def _timestamp(value: Any, what: str) -> datetime:
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise StateStoreError(f"{what}: {exc}") from None
