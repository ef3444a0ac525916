"""What operators read: the status table and the quarantine counts in /v1/status."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from cryptorun_daemon.cli.cmd_status import render_status
from cryptorun_daemon.data.quarantine_status import QuarantineStatus
from tests.harness.daemons import run_daemon, two_regions

STATUS = {
    "region": "us-east",
    "version": "0.1.0",
    "ready": False,
    "not_ready_reasons": ["failover state not loaded"],
    "state_backend": "file",
    "tiers": {
        "warm": {
            "primary": "eu-central",
            "epoch": 3,
            "role": "replica",
            "state_problem": "stored primary differs from config",
            "write_refusal": "epochs not compared with us-east",
            "rules": [
                {
                    "mode": "active-passive",
                    "from": "eu-central",
                    "to": ["us-east"],
                    "lag_slo_seconds": 60.0,
                }
            ],
            "sources": {
                "eu-central": {
                    "lag_seconds": 12.5,
                    "lag_slo_seconds": 60.0,
                    "pending_partitions": 2,
                    "last_success": "T1",
                    "last_error": None,
                }
            },
        },
        "hot": {
            "stream": {
                "origins": {
                    "eu-central": {
                        "replid": "abc",
                        "head_seq": 10,
                        "applied_seq": 9,
                        "connected": True,
                        "last_gap": None,
                    }
                }
            }
        },
    },
    "peers_health": {
        "eu-central": {
            "up": True,
            "reachable": True,
            "last_ok": "T2",
            "down_since": None,
            "last_error": None,
        }
    },
    "quarantine": {"warm": {"files": 1, "rows": 7}},
}


def test_render_status_shows_roles_lag_origins_peers_and_quarantine() -> None:
    """Every part of the status document an operator needs appears in the table output."""
    text = render_status(STATUS)
    assert "NOT READY: failover state not loaded" in text
    assert "[warm] primary=eu-central epoch=3 this region: replica" in text
    assert "STATE PROBLEM: stored primary differs from config" in text
    assert "NOT SEALING: epochs not compared with us-east" in text
    assert "12.5" in text
    assert "abc" in text
    assert "peers (state backend: file)" in text
    lines = [line.split() for line in text.splitlines()]
    assert ["warm", "1", "7"] in lines


async def test_quarantine_counts_reach_status(tmp_path: Path) -> None:
    """A quarantined file and a row sidecar under storage.root are counted in /v1/status."""
    spec, _ = two_regions(tmp_path)
    config_path = spec.write()
    root = spec.storage_root
    qdir = root / "_quarantine" / "warm" / "eu-central" / "trade"
    qdir.mkdir(parents=True)
    (qdir / "part-0.parquet.error.json").write_text("{}")
    part = root / "warm/trade/venue=kraken/symbol=BTC-USD/date=2025-09-01/hour=00"
    part.mkdir(parents=True)
    sidecar = {
        "version": 1,
        "files": {"part-0.parquet": {"region": "eu-central", "flagged_rows": 4}},
    }
    (part / "_quarantine.json").write_text(json.dumps(sidecar))
    async with run_daemon(config_path) as daemon:
        view = daemon.ctx.components["quarantine"]
        assert isinstance(view, QuarantineStatus)
        await view.refresh()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{spec.base_url}/v1/status?tier=warm") as resp,
        ):
            doc = await resp.json()
    assert doc["quarantine"] == {"warm": {"files": 1, "rows": 4}}
