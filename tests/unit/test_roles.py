"""The role model: epochs only grow, promotions are validated, state round-trips as JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cryptorun_daemon.errors import ConflictError, FencedError, StateStoreError, UsageError
from cryptorun_daemon.failover.roles import (
    HISTORY_LIMIT,
    Snapshot,
    TierState,
    Transition,
    export_role_metrics,
    require_active_passive,
)
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.timefmt import format_rfc3339, parse_rfc3339

T0 = datetime(2025, 9, 1, tzinfo=UTC)


def _warm(primary: str = "eu-central") -> TierState:
    return TierState.bootstrap("warm", primary, at=T0)


def test_bootstrap_starts_at_epoch_one_with_one_history_entry() -> None:
    """A bootstrapped tier has the configured primary, epoch 1 and a bootstrap transition."""
    state = _warm()
    assert state.primary == "eu-central"
    assert state.epoch == 1
    assert state.updated_at == T0
    assert state.history == (
        Transition(epoch=1, at=T0, kind="bootstrap", promoted="eu-central", demoted=None),
    )


def test_promotion_increments_epoch_swaps_primary_and_records_transition() -> None:
    """Promoting the candidate bumps the epoch by one and appends the transition."""
    later = T0 + timedelta(minutes=5)
    state = _warm().promoted("us-east", "eu-central", expected_epoch=1, at=later)
    assert (state.primary, state.epoch, state.updated_at) == ("us-east", 2, later)
    assert state.history[-1] == Transition(
        epoch=2, at=later, kind="promotion", promoted="us-east", demoted="eu-central"
    )
    assert state.role_of("us-east") == "primary"
    assert state.role_of("eu-central") == "replica"


def test_promotion_without_expected_epoch_uses_current_state() -> None:
    """``expected_epoch=None`` skips the epoch check but still validates the roles."""
    state = _warm().promoted("us-east", "eu-central", expected_epoch=None, at=T0)
    assert state.epoch == 2


def test_promotion_does_not_mutate_the_original() -> None:
    """States are values: promoting returns a new state and leaves the old one intact."""
    before = _warm()
    before.promoted("us-east", "eu-central", expected_epoch=1, at=T0)
    assert before.epoch == 1
    assert before.primary == "eu-central"


def test_stale_expected_epoch_is_a_conflict() -> None:
    """A request based on an older epoch is refused with a conflict naming both epochs."""
    state = _warm().promoted("us-east", "eu-central", expected_epoch=1, at=T0)
    with pytest.raises(ConflictError, match=r"stale epoch 1, current epoch is 2"):
        state.promoted("eu-central", "us-east", expected_epoch=1, at=T0)


def test_promoting_the_current_primary_is_a_conflict() -> None:
    """Promoting the region that already is primary is refused."""
    with pytest.raises(ConflictError, match="already primary"):
        _warm().promoted("eu-central", "us-east", expected_epoch=1, at=T0)


def test_demoting_a_region_that_is_not_primary_is_a_conflict() -> None:
    """``demote`` must be the current primary; otherwise the operator's picture is wrong."""
    with pytest.raises(ConflictError, match="cannot demote ap-south"):
        _warm().promoted("us-east", "ap-south", expected_epoch=1, at=T0)


def test_promote_equal_to_demote_is_a_usage_error() -> None:
    """Promoting and demoting the same region is a malformed request (400), not a conflict."""
    with pytest.raises(UsageError):
        _warm().promoted("us-east", "us-east", expected_epoch=1, at=T0)


@pytest.mark.parametrize("bad", ["US-East", "1region", "", "eu_central", "eu central"])
def test_invalid_region_names_are_usage_errors(bad: str) -> None:
    """Region names must match the contract pattern ``[a-z][a-z0-9-]*``."""
    with pytest.raises(UsageError):
        _warm().promoted(bad, "eu-central", expected_epoch=1, at=T0)
    with pytest.raises(UsageError):
        TierState.bootstrap("warm", bad, at=T0)


def test_hot_and_unknown_tiers_have_no_primary() -> None:
    """Hot is active-active (drain instead); names that are not tiers are refused too."""
    with pytest.raises(UsageError, match="drain"):
        require_active_passive("hot")
    with pytest.raises(UsageError, match="unknown tier"):
        TierState.bootstrap("tepid", "eu-central", at=T0)
    assert require_active_passive("cold") == "cold"


def test_epochs_only_grow_over_many_promotions() -> None:
    """Each promotion increases the epoch by exactly one; history epochs strictly increase."""
    state = _warm()
    regions = ["us-east", "eu-central"]
    for i in range(10):
        state = state.promoted(
            regions[i % 2], state.primary, expected_epoch=state.epoch, at=T0 + timedelta(i)
        )
    assert state.epoch == 11
    epochs = [t.epoch for t in state.history]
    assert epochs == sorted(set(epochs))
    assert epochs[-1] == state.epoch


def test_history_is_bounded_and_keeps_the_most_recent_transitions() -> None:
    """Past ``HISTORY_LIMIT`` transitions the oldest are dropped, the newest kept."""
    state = _warm()
    regions = ["us-east", "eu-central"]
    for i in range(HISTORY_LIMIT + 5):
        state = state.promoted(regions[i % 2], state.primary, expected_epoch=None, at=T0)
    assert len(state.history) == HISTORY_LIMIT
    assert state.history[-1].epoch == state.epoch
    assert state.history[0].epoch == state.epoch - HISTORY_LIMIT + 1
    assert all(t.kind == "promotion" for t in state.history)


def test_json_round_trip_is_exact() -> None:
    """``to_json`` → JSON text → ``from_json`` gives back an equal state."""
    state = _warm().promoted(
        "us-east", "eu-central", expected_epoch=1, at=T0 + timedelta(microseconds=123456)
    )
    text = json.dumps(state.to_json())
    assert TierState.from_json(json.loads(text)) == state


def test_json_shape_is_stable() -> None:
    """The stored document has the documented field names and RFC 3339 ``Z`` timestamps."""
    doc = _warm().to_json()
    assert doc == {
        "version": 1,
        "tier": "warm",
        "primary": "eu-central",
        "epoch": 1,
        "updated_at": "2025-09-01T00:00:00Z",
        "history": [
            {
                "epoch": 1,
                "at": "2025-09-01T00:00:00Z",
                "kind": "bootstrap",
                "promoted": "eu-central",
                "demoted": None,
            }
        ],
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epoch", 0, "epoch"),
        ("epoch", "1", "epoch"),
        ("epoch", True, "epoch"),
        ("primary", "Bad Region", "primary"),
        ("tier", "hot", "tier"),
        ("updated_at", "2025-09-01T00:00:00", "updated_at"),
        ("updated_at", "yesterday", "updated_at"),
        ("version", 2, "version"),
        ("history", {}, "history"),
    ],
)
def test_from_json_rejects_malformed_fields(field: str, value: object, message: str) -> None:
    """A stored state with a bad field is refused with an error naming that field."""
    doc = _warm().to_json()
    doc[field] = value
    with pytest.raises(StateStoreError, match=message):
        TierState.from_json(doc)


def test_from_json_rejects_history_that_goes_backwards() -> None:
    """History epochs must strictly increase and end at the current epoch."""
    doc = _warm().promoted("us-east", "eu-central", expected_epoch=1, at=T0).to_json()
    doc["history"].reverse()
    with pytest.raises(StateStoreError, match="strictly increase"):
        TierState.from_json(doc)
    doc = _warm().to_json()
    doc["epoch"] = 3
    with pytest.raises(StateStoreError, match="last history epoch"):
        TierState.from_json(doc)


def test_from_json_rejects_non_objects() -> None:
    """Anything but a JSON object is refused, not half-parsed."""
    bad_values: list[object] = [None, [], "warm", 1]
    for bad in bad_values:
        with pytest.raises(StateStoreError):
            TierState.from_json(bad)


def test_rfc3339_formatting_and_parsing() -> None:
    """Timestamps print in UTC with ``Z`` and parse from ``Z`` or numeric offsets."""
    assert format_rfc3339(T0) == "2025-09-01T00:00:00Z"
    plus2 = datetime(2025, 9, 1, 2, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2)))
    assert format_rfc3339(plus2) == "2025-09-01T00:00:00.500000Z"
    assert parse_rfc3339("2025-09-01T02:00:00+02:00") == T0
    assert parse_rfc3339("2025-09-01T00:00:00Z") == T0
    with pytest.raises(ValueError, match="naive"):
        format_rfc3339(datetime(2025, 9, 1))  # deliberately naive
    with pytest.raises(ValueError):
        parse_rfc3339("2025-09-01")


def test_check_writer_fences_everyone_but_the_current_primary_and_epoch() -> None:
    """Only the primary at the current epoch may write; an old primary or old epoch is fenced."""
    state = _warm().promoted("us-east", "eu-central", expected_epoch=1, at=T0)
    state.check_writer("us-east", 2)
    with pytest.raises(FencedError, match="eu-central at epoch 1 is fenced"):
        state.check_writer("eu-central", 1)
    with pytest.raises(FencedError):
        state.check_writer("us-east", 1)


def test_snapshot_json_lists_tiers_and_sorted_regions() -> None:
    """The snapshot's JSON view is deterministic (sorted), for status output."""
    snap = Snapshot(tiers={"warm": _warm()}, drained=frozenset({"b", "a"}), alive=frozenset({"c"}))
    doc = snap.to_json()
    assert list(doc["tiers"]) == ["warm"]
    assert doc["drained"] == ["a", "b"]
    assert doc["alive"] == ["c"]
    assert snap.epochs() == {"warm": 1}


def test_export_role_metrics_sets_role_and_epoch_gauges() -> None:
    """``cryptorun_region_role`` is 1 for the primary, 0 for others; the epoch gauge follows."""
    metrics = Metrics()
    state = _warm().promoted("us-east", "eu-central", expected_epoch=1, at=T0)
    export_role_metrics(metrics, state, ["eu-central", "us-east"])

    def sample(name: str, labels: dict[str, str]) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("cryptorun_region_role", {"tier": "warm", "region": "us-east"}) == 1
    assert sample("cryptorun_region_role", {"tier": "warm", "region": "eu-central"}) == 0
    assert sample("cryptorun_failover_epoch", {"tier": "warm"}) == 2
