"""`cryptorun replication failover` and `POST /v1/failover` against two real daemon processes.

File state store (the default): each region keeps its own state under its own
storage.root; the daemon that takes the failover persists the new epoch and
notifies the other, a region that was down learns it when it comes back.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.harness.admin import TOKEN, auth_headers, post_failover
from tests.harness.cli import cli as run_cli_async
from tests.harness.daemons import RegionSpec, run_daemon_process, stop_process, two_regions
from tests.harness.wait import eventually

EU, US = "eu-central", "us-east"

pytestmark = pytest.mark.slow


@pytest.fixture
def regions(tmp_path: Path) -> tuple[RegionSpec, RegionSpec]:
    a, b = two_regions(tmp_path)
    for spec in (a, b):
        spec.sections["replication"] = {"peer_down_after": "2s"}
        spec.sections["log"] = {"format": "json"}
    return a, b


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cryptorun replication failover ARGS`` in a subprocess."""
    return await run_cli_async("replication", "failover", *args, env=env)


async def metrics_of(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.get(f"{base_url}/metrics") as resp:
        return await resp.text()


async def until_metrics_contain(
    http: aiohttp.ClientSession, base_url: str, *lines: str, timeout: float = 15.0
) -> None:
    """Poll a daemon's /metrics until every line is present (fails naming the missing ones)."""
    text = ""

    async def present() -> bool:
        nonlocal text
        text = await metrics_of(http, base_url)
        return all(line in text for line in lines)

    await eventually(
        present,
        f"{base_url}/metrics to contain every line",
        timeout=timeout,
        detail=lambda: f"still missing: {[line for line in lines if line not in text]}",
    )


EPOCH_1 = (
    'cryptorun_failover_epoch{tier="warm"} 1.0',
    'cryptorun_region_role{region="eu-central",tier="warm"} 1.0',
)
EPOCH_2 = (
    'cryptorun_failover_epoch{tier="warm"} 2.0',
    'cryptorun_region_role{region="eu-central",tier="warm"} 0.0',
    'cryptorun_region_role{region="us-east",tier="warm"} 1.0',
)


async def test_cli_dry_run_then_failover_then_refused_promotion(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """Dry run (human table) exits 0 and changes nothing; the real failover (--json)
    exits 0 with epoch 2, and both regions' role and epoch gauges follow; promoting the
    new primary again exits 1 with the 409 detail on stderr."""
    a, b = regions
    a_config, b_config = a.write(), b.write()
    async with (
        run_daemon_process(a_config),
        run_daemon_process(b_config),
        aiohttp.ClientSession() as http,
    ):
        dry = await cli(
            "--config",
            str(a_config),
            "--tier",
            "warm",
            "--promote",
            US,
            "--demote",
            EU,
            "--dry-run",
        )
        assert dry.returncode == 0, dry.stderr
        assert (
            "DRY RUN: failover of warm would promote us-east and demote eu-central "
            "(epoch 1 -> 2); nothing was changed" in dry.stdout
        )
        assert "REGION ROLE EPOCH LAG S LAST SUCCESS REACHABLE" in " ".join(dry.stdout.split())
        assert "[planned] persist_epoch: file store: warm epoch 1 -> 2" in dry.stdout
        for spec in (a, b):
            await until_metrics_contain(http, spec.base_url, *EPOCH_1)

        done = await cli(
            "--admin-url",
            a.base_url,
            "--tier",
            "warm",
            "--promote",
            US,
            "--demote",
            EU,
            "--dry-run=false",
            "--json",
            env={"CRYPTORUN_ADMIN_TOKEN": TOKEN},
        )
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert (
            doc["tier"],
            doc["epoch"],
            doc["primary"],
            doc["previous_primary"],
            doc["dry_run"],
        ) == ("warm", 2, US, EU, False)
        row = doc["after"]["regions"][US]
        assert (row["role"], row["epoch"], row["reachable"]) == ("primary", 2, True)
        assert set(row) == {
            "role",
            "epoch",
            "lag_seconds",
            "lag_slo_seconds",
            "last_success",
            "reachable",
        }
        assert doc["before"]["regions"][EU]["role"] == "primary"
        for spec in (a, b):
            await until_metrics_contain(http, spec.base_url, *EPOCH_2)

        refused = await cli(
            "--config", str(a_config), "--tier", "warm", "--promote", US, "--demote", EU
        )
        assert refused.returncode == 1
        assert "(409 conflict): tier warm: us-east is already primary at epoch 2" in refused.stderr
        assert refused.stdout == ""


async def test_api_refuses_stale_epoch_and_bad_bodies(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """Over HTTP: a stale expected_epoch is 409, a malformed body 400, both JSON with a
    detail; the epoch stays where the one successful failover put it."""
    a, b = regions
    async with (
        run_daemon_process(a.write()),
        run_daemon_process(b.write()),
        aiohttp.ClientSession() as http,
    ):
        body = {"tier": "warm", "promote": US, "demote": EU, "dry_run": False, "expected_epoch": 1}
        code, doc = await post_failover(http, b.base_url, body)
        assert code == 200, doc
        code, doc = await post_failover(http, b.base_url, {**body, "promote": EU, "demote": US})
        assert code == 409
        assert doc == {
            "error": "conflict",
            "detail": "tier warm: stale epoch 1, current epoch "
            "is 2 (primary us-east); re-read status and retry",
        }
        async with http.post(
            f"{b.base_url}/v1/failover", headers=auth_headers(), data=b"tier=warm"
        ) as resp:
            assert resp.status == 400
            assert await resp.json() == {
                "error": "bad_request",
                "detail": "request body must be a JSON object",
            }
        code, doc = await post_failover(http, b.base_url, {"tier": "warm", "promote": US})
        assert (code, doc["detail"]) == (400, "demote is required and must be a string")
        async with http.get(f"{a.base_url}/v1/status?tier=warm") as resp:
            assert (await resp.json())["tiers"]["warm"]["epoch"] == 2


async def test_failover_with_the_demoted_region_down_and_its_rejoin(
    regions: tuple[RegionSpec, RegionSpec],
) -> None:
    """With eu-central's process stopped, failover via us-east still exits 0, printing a
    warning that eu-central could not be told; restarted, eu-central learns epoch 2 from
    us-east and reports itself as replica."""
    a, b = regions
    a_config, b_config = a.write(), b.write()
    async with run_daemon_process(b_config), aiohttp.ClientSession() as http:
        async with run_daemon_process(a_config) as a_proc:
            stop_process(a_proc.proc)
        done = await cli(
            "--config",
            str(b_config),
            "--tier",
            "warm",
            "--promote",
            US,
            "--demote",
            EU,
            "--dry-run=false",
        )
        assert done.returncode == 0, done.stderr
        assert (
            "failover of warm done: us-east is primary at epoch 2 (was eu-central at "
            "epoch 1)" in done.stdout
        )
        assert "warnings:" in done.stdout
        assert "! could not notify eu-central" in done.stdout
        assert "[failed] notify eu-central" in done.stdout
        assert "eu-central replica - " in " ".join(done.stdout.split())  # epoch unknown
        await until_metrics_contain(http, b.base_url, *EPOCH_2)
        async with run_daemon_process(a_config):
            await until_metrics_contain(http, a.base_url, *EPOCH_2)
            async with http.get(f"{a.base_url}/v1/status?tier=warm") as resp:
                warm = (await resp.json())["tiers"]["warm"]
            assert (warm["role"], warm["primary"], warm["epoch"]) == ("replica", US, 2)
