"""Why automatic failover did (not) fire: each guard's reason in /v1/status, logged once per change.

The failover component runs in this process with a fake clock and is not
started: the test hands it snapshots (who holds a lease) the way the etcd
watch would, and runs one round of :meth:`FailoverComponent.check_auto_failover`
at a time. Promotions go through a real file state store, which applies the
same compare-and-swap rule as etcd (``TierState.promoted``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from cryptorun_daemon.config import load_config
from cryptorun_daemon.failover.component import FailoverComponent
from cryptorun_daemon.failover.roles import Snapshot, TierState
from cryptorun_daemon.failover.store_file import FileStateStore
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.clock import FakeClock
from cryptorun_daemon.runtime.component import DaemonContext
from cryptorun_daemon.runtime.supervisor import Supervisor
from tests.harness.daemons import RegionSpec

EU, US, AP = "eu-central", "us-east", "ap-south"
LEASE_TTL = 2.0
MIN_INTERVAL = 60.0


@pytest.fixture(autouse=True)
def info_logs_reach_capture() -> Iterator[None]:
    """Let info events through whatever level an earlier test configured; restore after."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(**saved)


def component(
    tmp_path: Path, *, region: str = US, peers: tuple[str, ...] = (EU,), auto: bool = True
) -> tuple[FailoverComponent, FakeClock]:
    """A failover component for ``region`` (etcd backend, auto failover on), not started."""
    spec = RegionSpec(region, 9100, tmp_path / region, peers=dict.fromkeys(peers, 9200))
    spec.rules = [
        {
            "tier": "warm",
            "from": EU,
            "to": [r for r in (US, AP) if r in {region, *peers}],
            "lag_slo": "60s",
        }
    ]
    if auto:
        spec.sections["state"] = {
            "backend": "etcd",
            "etcd_endpoints": ["http://127.0.0.1:9"],  # never contacted: start() is not called
            "lease_ttl": f"{LEASE_TTL:g}s",
            "auto_failover": True,
            "auto_failover_min_interval": f"{MIN_INTERVAL:g}s",
        }
    config = load_config(spec.write())
    metrics = Metrics()
    clock = FakeClock()
    ctx = DaemonContext(config=config, metrics=metrics, clock=clock, supervisor=Supervisor(metrics))
    return FailoverComponent(ctx), clock


def see(failover: FailoverComponent, state: TierState, *alive: str) -> None:
    """Deliver a snapshot as the etcd watch would: ``state`` and the regions holding a lease."""
    failover.apply_snapshot(Snapshot(tiers={"warm": state}, alive=frozenset(alive)))


def auto_status(failover: FailoverComponent) -> dict[str, Any]:
    result: dict[str, Any] = failover.status(tier="warm", region=None)["tiers"]["warm"]
    return dict(result["auto_failover"])


def skipped(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [e["reason"] for e in logs if e["event"] == "auto_failover_skipped"]


async def test_guards_give_reasons_in_status_and_each_change_is_logged_once(
    tmp_path: Path,
) -> None:
    """Primary alive → its lease just gone → too soon after the last transition → promote:
    status names each guard as it holds, every tick re-checks, but the log has one line per
    change of reason."""
    failover, clock = component(tmp_path)
    store = FileStateStore(tmp_path / "store", clock=clock)
    failover.store = store
    first = await store.initialise("warm", EU)
    with capture_logs() as logs:
        see(failover, first, EU, US)
        await failover.check_auto_failover()
        since = auto_status(failover)["since"]
        clock.advance(0.5)
        await failover.check_auto_failover()
        assert auto_status(failover) == {
            "enabled": True,
            "last_decision": "skip",
            "reason": "primary_alive",
            "detail": f"the primary {EU} holds its lease",
            "since": since,
        }

        see(failover, first, US)  # the primary's lease expired
        for _ in range(3):
            await failover.check_auto_failover()
            clock.advance(LEASE_TTL / 4)
        assert auto_status(failover)["reason"] == "primary_absent_briefly"

        clock.advance(LEASE_TTL)
        await failover.check_auto_failover()
        await failover.check_auto_failover()
        status = auto_status(failover)
        assert (status["last_decision"], status["reason"]) == ("skip", "min_interval")
        assert "auto_failover_min_interval (60 s)" in status["detail"]

        clock.advance(MIN_INTERVAL)
        await failover.check_auto_failover()
        status = auto_status(failover)
        assert (status["last_decision"], status["reason"]) == ("promote", "primary_lease_expired")
        promoted = failover.current("warm")
        assert promoted is not None
        assert (promoted.primary, promoted.epoch) == (US, 2)

    assert skipped(logs) == ["primary_alive", "primary_absent_briefly", "min_interval"]
    assert [e["tier"] for e in logs if e["event"] == "auto_failover"] == ["warm"]


async def test_a_primary_never_seen_and_a_missing_own_lease_are_reasons_too(
    tmp_path: Path,
) -> None:
    """A primary this daemon never saw alive (cluster restart) and a region without its own
    lease (cut off from etcd) each block the promotion with their own reason."""
    failover, clock = component(tmp_path)
    state = TierState.bootstrap("warm", EU, at=clock.now())
    with capture_logs() as logs:
        see(failover, state, US)
        await failover.check_auto_failover()
        assert auto_status(failover)["reason"] == "primary_never_seen"
        see(failover, state, EU, US)
        see(failover, state)  # nobody holds a lease: this region cannot reach etcd either
        await failover.check_auto_failover()
        await failover.check_auto_failover()
        assert auto_status(failover)["reason"] == "own_lease_missing"
    assert skipped(logs) == ["primary_never_seen", "own_lease_missing"]


async def test_another_first_candidate_and_a_lost_race_are_reported(tmp_path: Path) -> None:
    """With ap-south alive, us-east leaves the promotion to it (sorted first); when it does
    try and another region's promotion already won the CAS, the decision is ``lost``."""
    failover, clock = component(tmp_path, peers=(EU, AP))
    store = FileStateStore(tmp_path / "store", clock=clock)
    failover.store = store
    first = await store.initialise("warm", EU)
    clock.advance(MIN_INTERVAL)
    see(failover, first, EU, AP, US)
    see(failover, first, AP, US)
    await failover.check_auto_failover()
    clock.advance(LEASE_TTL)
    await failover.check_auto_failover()
    assert auto_status(failover)["reason"] == "not_first_candidate"
    assert AP in auto_status(failover)["detail"]

    await store.promote("warm", AP, EU, 1)  # ap-south won; this region has not seen it yet
    see(failover, first, US)
    with capture_logs() as logs:
        await failover.check_auto_failover()
    status = auto_status(failover)
    assert (status["last_decision"], status["reason"]) == ("lost", "lost_race")
    assert [e["event"] for e in logs if e["event"].startswith("auto_failover")] == [
        "auto_failover",
        "auto_failover_lost",
    ]


async def test_status_says_auto_failover_is_off(tmp_path: Path) -> None:
    """With ``auto_failover`` off (the default) every tier reports ``disabled``."""
    failover, clock = component(tmp_path, auto=False)
    see(failover, TierState.bootstrap("warm", EU, at=clock.now()), EU, US)
    assert auto_status(failover) == {
        "enabled": False,
        "last_decision": None,
        "reason": "disabled",
        "detail": "[state] auto_failover is off: only an operator promotes",
        "since": None,
    }
