"""The failover component through its HTTP API, with real daemons in this process.

Two regions on loopback (file state store, each under its own storage.root):
status and metrics, dry run, real failover with notify, validation (400) and
conflicts (409), the notify endpoint, rejoin learning and peer health.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.config import load_config
from cryptorun_daemon.daemon import Daemon
from cryptorun_daemon.failover.component import FailoverComponent
from cryptorun_daemon.failover.roles import TierState
from cryptorun_daemon.failover.store_file import FileStateStore
from cryptorun_daemon.storage.layout import PartitionKey
from cryptorun_daemon.storage.seal import is_sealed
from cryptorun_daemon.storage.write_fence import Fence, read_fence
from tests.harness.admin import auth_headers
from tests.harness.daemons import RegionSpec, run_daemon, two_regions
from tests.harness.testdata import write_trade_partition
from tests.harness.wait import eventually

EU, US = "eu-central", "us-east"


def failover_of(daemon: Daemon) -> FailoverComponent:
    component = daemon.ctx.components["failover"]
    assert isinstance(component, FailoverComponent)
    return component


@pytest.fixture
def regions(tmp_path: Path) -> tuple[RegionSpec, RegionSpec]:
    a, b = two_regions(tmp_path)
    for spec in (a, b):
        spec.sections["replication"] = {"peer_down_after": "1s"}
    return a, b


@contextlib.asynccontextmanager
async def both(regions: tuple[RegionSpec, RegionSpec]) -> AsyncIterator[tuple[Daemon, Daemon]]:
    a, b = regions
    async with run_daemon(load_config(a.write())) as da, run_daemon(load_config(b.write())) as db:
        yield da, db


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, *, raw: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with http.post(url, headers=auth_headers(), **kwargs) as resp:
        return resp.status, await resp.json()


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        return await resp.json()


async def get_metrics(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.get(f"{base_url}/metrics") as resp:
        return await resp.text()


def failover_body(**overrides: Any) -> dict[str, Any]:
    return {"tier": "warm", "promote": US, "demote": EU, "dry_run": False, **overrides}


async def test_status_and_metrics_show_roles_from_the_config_bootstrap(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """At start each tier is seeded from its rule: eu-central primary at epoch 1, in status
    (primary, epoch, role, history, backend, peer health) and in the role/epoch gauges."""
    _, b = regions
    async with both(regions), aiohttp.ClientSession() as http:
        status = await get_json(http, f"{b.base_url}/v1/status")
        metrics = await get_metrics(http, b.base_url)
    warm = status["tiers"]["warm"]
    assert (warm["primary"], warm["epoch"], warm["role"]) == (EU, 1, "replica")
    assert warm["roles"] == {EU: "primary", US: "replica"}
    assert warm["history"][0]["kind"] == "bootstrap"
    assert warm["rules"][0]["from"] == EU  # the daemon's own part is still there
    assert status["state_backend"] == "file"
    assert status["peers_health"][EU]["up"] is True
    assert "primary" not in status["tiers"]["hot"]
    assert 'cryptorun_failover_epoch{tier="warm"} 1.0' in metrics
    assert 'cryptorun_region_role{region="eu-central",tier="warm"} 1.0' in metrics
    assert 'cryptorun_region_role{region="us-east",tier="cold"} 0.0' in metrics


async def test_dry_run_reports_the_actions_and_changes_nothing(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """A dry run answers 200 with the new epoch and planned actions, but the store, the
    cache and the gauges keep epoch 1 and no peer is notified."""
    a, _ = regions
    async with both(regions) as (da, db), aiohttp.ClientSession() as http:
        code, doc = await post(http, f"{a.base_url}/v1/failover", failover_body(dry_run=True))
        metrics = await get_metrics(http, a.base_url)
        assert code == 200, doc
        assert (doc["epoch"], doc["primary"], doc["previous_primary"]) == (2, US, EU)
        assert doc["dry_run"] is True
        assert {x["status"] for x in doc["actions"] if x["action"] != "check"} == {"planned"}
        assert [x["target"] for x in doc["actions"] if x["action"] == "notify"] == [US]
        assert doc["before"]["regions"][EU]["role"] == "primary"
        assert doc["after"]["regions"][US]["role"] == "primary"
        assert failover_of(da).epoch("warm") == 1
        assert failover_of(db).epoch("warm") == 1
        assert (await FileStateStore(a.storage_root).get("warm")).epoch == 1
        assert 'cryptorun_failover_epoch{tier="warm"} 1.0' in metrics


async def test_failover_persists_the_epoch_and_notifies_the_peer(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """A real failover via eu-central: its store holds epoch 2 before the answer; us-east
    learns it through notify (its own store too), listeners fire, roles and gauges flip."""
    a, b = regions
    async with both(regions) as (da, db), aiohttp.ClientSession() as http:
        seen: list[tuple[int, int | None]] = []
        failover_of(db).add_listener(
            lambda new, old: seen.append((new.epoch, old.epoch if old else None))
        )
        waiter = asyncio.ensure_future(failover_of(db).wait_for_change("warm", newer_than=1))
        assert failover_of(db).is_primary("warm", EU)
        code, doc = await post(http, f"{a.base_url}/v1/failover", failover_body())
        assert code == 200, doc
        assert (doc["epoch"], doc["primary"], doc["previous_primary"]) == (2, US, EU)
        assert not [w for w in doc["warnings"] if "notify" in w or "unreachable" in w]
        assert [x["status"] for x in doc["actions"]] == ["done"] * 4 + ["planned"]
        assert doc["after"]["regions"][US]["epoch"] == 2  # acknowledged by the peer
        assert (await FileStateStore(a.storage_root).get("warm")).epoch == 2
        assert (await FileStateStore(b.storage_root).get("warm")).primary == US
        assert (await asyncio.wait_for(waiter, 10)).primary == US
        assert seen == [(2, 1)]
        assert failover_of(db).is_primary("warm")
        assert not failover_of(da).is_primary("warm")
        assert failover_of(da).epoch("cold") == 1  # other tier untouched
        for daemon in (a, b):
            metrics = await get_metrics(http, daemon.base_url)
            assert 'cryptorun_failover_epoch{tier="warm"} 2.0' in metrics
            assert 'cryptorun_region_role{region="us-east",tier="warm"} 1.0' in metrics
            assert 'cryptorun_region_role{region="eu-central",tier="warm"} 0.0' in metrics
        status = await get_json(http, f"{a.base_url}/v1/status?tier=warm")
        assert status["tiers"]["warm"]["role"] == "replica"
        assert status["tiers"]["warm"]["history"][-1] | {"at": None} == {
            "epoch": 2,
            "at": None,
            "kind": "promotion",
            "promoted": US,
            "demoted": EU,
        }


@pytest.mark.parametrize(
    ("body", "raw", "detail"),
    [
        (None, b"{not json", "request body must be a JSON object"),
        ([1, 2], None, "request body must be a JSON object"),
        ({"promote": US, "demote": EU}, None, "tier"),
        (failover_body(tier="hot"), None, "tier hot is active-active"),
        (failover_body(tier="lukewarm"), None, "unknown tier"),
        (failover_body(promote="mars"), None, "region 'mars' is unknown"),
        (failover_body(promote=EU), None, "promote and demote are both"),
        (failover_body(dry_run="yes"), None, "dry_run must be true or false"),
        (failover_body(expected_epoch=0), None, "expected_epoch must be an integer"),
        (failover_body(force=True), None, "unknown field(s) force"),
    ],
)
async def test_malformed_requests_are_400_with_a_detail(
    regions: tuple[RegionSpec, RegionSpec],
    body: Any,
    raw: bytes | None,
    detail: str,
) -> None:
    """Every malformed body is refused with 400 JSON naming the problem; nothing changes."""
    a, _ = regions
    async with run_daemon(load_config(a.write())) as da, aiohttp.ClientSession() as http:
        code, doc = await post(http, f"{a.base_url}/v1/failover", body, raw=raw)
        assert failover_of(da).epoch("warm") == 1
    assert code == 400
    assert doc["error"] == "bad_request"
    assert detail in doc["detail"]


async def test_conflicts_are_409(regions: tuple[RegionSpec, RegionSpec]) -> None:
    """Promoting the primary, demoting a replica, or a stale expected_epoch → 409 with a
    clear detail; after a real failover the old expected_epoch is stale."""
    a, _ = regions
    async with both(regions), aiohttp.ClientSession() as http:
        url = f"{a.base_url}/v1/failover"
        code, doc = await post(http, url, failover_body(promote=EU, demote=US))
        assert (code, doc["error"]) == (409, "conflict")
        assert "eu-central is already primary at epoch 1" in doc["detail"]
        code, doc = await post(http, url, failover_body(expected_epoch=1))
        assert code == 200
        code, doc = await post(http, url, failover_body(expected_epoch=1, promote=EU, demote=US))
        assert code == 409
        assert "stale epoch 1, current epoch is 2" in doc["detail"]
        code, doc = await post(http, url, failover_body(tier="warm"))
        assert code == 409
        assert "us-east is already primary at epoch 2" in doc["detail"]


async def test_notify_applies_only_newer_epochs_and_refuses_divergence(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """The peer endpoint needs the token, ignores an older or equal state, adopts a newer
    one by replaying its transitions, answers 409 for a same-epoch divergent state and
    400 for a malformed one."""
    _, b = regions
    async with run_daemon(load_config(b.write())) as db, aiohttp.ClientSession() as http:
        url = f"{b.base_url}/v1/failover/notify"
        current = failover_of(db).current("warm")
        assert current is not None
        async with http.post(url, json={"from": EU, "state": current.to_json()}) as resp:
            assert resp.status == 401
        code, doc = await post(http, url, {"from": EU, "state": current.to_json()})
        assert (code, doc["applied"], doc["epoch"]) == (200, False, 1)
        divergent = TierState(
            tier="warm",
            primary="ap-south",
            epoch=1,
            updated_at=current.updated_at,
            history=current.history,
        )
        code, doc = await post(http, url, {"from": EU, "state": divergent.to_json()})
        assert code == 409
        assert "divergent state at epoch 1" in doc["detail"]
        newer = current.promoted(US, EU, expected_epoch=1, at=current.updated_at)
        newer = newer.promoted(EU, US, expected_epoch=2, at=current.updated_at)
        code, doc = await post(http, url, {"from": EU, "state": newer.to_json()})
        assert (code, doc["applied"], doc["epoch"], doc["primary"]) == (200, True, 3, EU)
        assert (await FileStateStore(b.storage_root).get("warm")).epoch == 3
        code, doc = await post(http, url, {"from": EU, "state": {"tier": "warm"}})
        assert code == 400
        assert doc["detail"].startswith("state: ")


async def test_failover_with_the_demoted_region_down_warns_and_it_learns_on_rejoin(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """With eu-central not running, failover via us-east succeeds with warnings; when
    eu-central starts it learns epoch 2 from us-east's status and is a replica."""
    a, b = regions
    async with run_daemon(load_config(b.write())) as db, aiohttp.ClientSession() as http:
        code, doc = await post(http, f"{b.base_url}/v1/failover", failover_body())
        assert code == 200, doc
        assert doc["before"]["regions"][EU]["reachable"] is False
        assert any("demoted region eu-central is unreachable" in w for w in doc["warnings"])
        assert any(w.startswith("could not notify eu-central") for w in doc["warnings"])
        assert failover_of(db).is_primary("warm")
        async with run_daemon(load_config(a.write())) as da:
            # The first peer comparison runs before the daemon reports ready.
            assert failover_of(da).epoch("warm") == 2
            assert not failover_of(da).is_primary("warm")
            assert failover_of(da).is_primary("cold")
            assert (await FileStateStore(a.storage_root).get("warm")).primary == US


async def test_peer_health_goes_down_after_peer_down_after_and_up_again(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """A peer that never answers is reported down (with down_since) once peer_down_after
    (1 s) passes, cryptorun_peer_up is 0; when it starts it is up again."""
    a, b = regions
    async with run_daemon(load_config(a.write())) as da, aiohttp.ClientSession() as http:
        component = failover_of(da)
        await eventually(lambda: not component.peer_health()[US].up, "us-east counted down")
        health = (await get_json(http, f"{a.base_url}/v1/status"))["peers_health"][US]
        assert health["up"] is False
        assert health["reachable"] is False
        assert health["down_since"] is not None
        assert 'cryptorun_peer_up{peer="us-east"} 0.0' in await get_metrics(http, a.base_url)
        async with run_daemon(load_config(b.write())):
            await eventually(lambda: component.peer_health()[US].up, "us-east counted up")
            assert component.peer_health()[US].last_ok is not None
            assert component.peer_health()[US].down_since is None


async def test_stored_primary_wins_over_the_config_rule(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """When the store already names another primary (an earlier failover), start-up keeps
    it rather than resetting the tier to the config's `from`."""
    a, _ = regions
    a.write()
    store = FileStateStore(a.storage_root)
    await store.initialise("warm", EU)
    await store.promote("warm", US, EU, 1)
    async with run_daemon(load_config(a.write())) as da:
        assert failover_of(da).current("warm") == await store.get("warm")
        assert failover_of(da).epoch("warm") == 2
        assert not failover_of(da).is_primary("warm")


async def test_an_unreadable_store_answers_503_state_store_and_the_fence_follows_the_epoch(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """A failover advances both regions' storage fences to the new epoch and primary (with
    the promotion's time as the end of epoch 1, the same on both sides); a store that can
    no longer be read answers 503 state_store through the central error mapping."""
    a, b = regions
    async with both(regions), aiohttp.ClientSession() as http:
        code, doc = await post(http, f"{b.base_url}/v1/failover", failover_body())
        assert code == 200, doc

        def fences() -> list[Fence | None]:
            return [read_fence(spec.storage_root, "warm") for spec in (a, b)]

        await eventually(
            lambda: all(f is not None and f.epoch == 2 for f in fences()), "every fence at epoch 2"
        )
        assert {(f.epoch, f.primary) for f in fences() if f} == {(2, US)}
        assert len({f.ended_at(1) for f in fences() if f}) == 1
        (b.storage_root / "_state" / "roles.json").write_text("{not json")
        code, doc = await post(
            http, f"{b.base_url}/v1/failover", failover_body(promote=EU, demote=US)
        )
        assert code == 503
        assert doc["error"] == "state_store"
        assert "corrupt JSON" in doc["detail"]


async def test_a_restarted_old_primary_does_not_seal_until_it_has_compared_epochs(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """File store, no quorum: eu-central comes back still holding "primary at epoch 1" while
    us-east was promoted to epoch 2 meanwhile. Until it has compared epochs with us-east (or
    seen it down for peer_down_after) it is ready but does not act as primary: no hot sealing,
    seal requests 503 seal_refused (retry later, not "not ready"). Once us-east answers it
    adopts epoch 2 and is fenced (409)."""
    a, b = regions
    a.sections["replication"] = {"peer_down_after": "120s"}  # the window under test
    a.write()
    b.write()
    await FileStateStore(a.storage_root).initialise("warm", EU)
    b_store = FileStateStore(b.storage_root)
    await b_store.initialise("warm", EU)
    await b_store.promote("warm", US, EU, 1)
    key = PartitionKey(
        day=date(2025, 9, 1), hour=3, tier="warm", dataset="trade", venue="kraken", symbol="BTC-USD"
    )
    write_trade_partition(a.storage_root, key, rows=50, origin=EU)
    seal_url = f"{a.base_url}/v1/partitions/seal"
    body = {"tier": "warm", "partition": key.relpath}
    async with run_daemon(load_config(a.write())) as da, aiohttp.ClientSession() as http:
        component = failover_of(da)
        state = component.current("warm")
        assert state is not None
        assert (state.primary, state.epoch) == (EU, 1)  # its stale belief
        async with http.get(f"{a.base_url}/readyz") as resp:
            assert resp.status == 200  # ready: reads and replication go on
        assert not component.is_primary("warm")
        warm = (await get_json(http, f"{a.base_url}/v1/status?tier=warm"))["tiers"]["warm"]
        assert "has not confirmed its roles yet" in warm["write_refusal"]
        assert "us-east" in warm["write_refusal"]
        code, doc = await post(http, seal_url, body)
        assert (code, doc["error"]) == (503, "seal_refused"), doc
        assert "epochs not compared with us-east" in doc["detail"]
        assert not is_sealed(key.directory(a.storage_root))

        async with run_daemon(load_config(b.write())):
            await eventually(lambda: component.epoch("warm") == 2, "warm at epoch 2")
            assert not component.is_primary("warm")
            warm = (await get_json(http, f"{a.base_url}/v1/status?tier=warm"))["tiers"]["warm"]
            assert (warm["primary"], warm["role"], warm["write_refusal"]) == (US, "replica", None)
            code, doc = await post(http, seal_url, body)
            assert (code, doc["error"]) == (409, "fenced"), doc
        assert not is_sealed(key.directory(a.storage_root))


async def test_a_lone_primary_acts_once_its_silent_peer_counts_as_down(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """With no peer to compare with, the stored role is trusted only after the peer has been
    unreachable for peer_down_after (1 s here): never before it counts as down."""
    a, _ = regions
    async with run_daemon(load_config(a.write())) as da:
        component = failover_of(da)
        deadline = time.monotonic() + 15
        while not component.is_primary("warm"):
            assert component.peer_health()[US].up, "down but still not acting as primary"
            assert time.monotonic() < deadline, component.write_refusal("warm")
            await asyncio.sleep(0.01)
        assert not component.peer_health()[US].up
        assert component.write_refusal("warm") is None
