"""A daemon as a real subprocess: admin endpoints, auth, signals and sd_notify."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.harness.admin import TOKEN, auth_headers
from tests.harness.daemons import (
    RegionSpec,
    run_daemon_process,
    start_daemon_process,
    two_regions,
    wait_until_ready,
)
from tests.harness.net import free_port
from tests.harness.tools import require_binary

CONTRACT_METRICS = (
    "cryptorun_replication_lag_seconds",
    "cryptorun_replication_plan_steps_total",
    "cryptorun_replication_step_failures_total",
    "cryptorun_replication_step_seconds",
    "cryptorun_replication_bytes_total",
    "cryptorun_data_consistency_errors_total",
    "cryptorun_validation_errors_total",
    "cryptorun_quarantine_total",
    "cryptorun_hot_seq_gaps_total",
    "cryptorun_hot_records_total",
    "cryptorun_region_role",
    "cryptorun_failover_epoch",
)


@pytest.fixture
def region(tmp_path: Path) -> RegionSpec:
    a, _ = two_regions(tmp_path)
    return a


async def test_health_ready_status_and_metrics_are_served(region: RegionSpec) -> None:
    """The public endpoints answer without a token with the documented bodies."""
    async with run_daemon_process(region.write()) as daemon, aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.base_url}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        async with http.get(f"{daemon.base_url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["reasons"] == []
        async with http.get(f"{daemon.base_url}/v1/status") as resp:
            status = await resp.json()
            assert status["region"] == "eu-central"
            assert status["tiers"]["warm"]["rules"][0]["to"] == ["us-east"]
        async with http.get(f"{daemon.base_url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    for name in CONTRACT_METRICS:
        assert f"# TYPE {name} " in text, name
    assert 'cryptorun_build_info{version="0.1.0"} 1.0' in text
    assert 'cryptorun_data_consistency_errors_total{check="corrupt"} 0.0' in text


@pytest.mark.needs_prometheus
async def test_metrics_output_passes_promtool(region: RegionSpec, tmp_path: Path) -> None:
    """`promtool check metrics` finds no problem in the exposition (names, help, units)."""
    promtool = require_binary("promtool", "prometheus")
    async with run_daemon_process(region.write()) as daemon, aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.base_url}/metrics") as resp:
            text = await resp.read()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == ""
    assert result.stderr.decode().strip() == ""


async def test_protected_endpoints_need_the_token(region: RegionSpec) -> None:
    """Without or with a wrong bearer token the answer is a 401 JSON body; rejects are counted."""
    async with run_daemon_process(region.write()) as daemon, aiohttp.ClientSession() as http:
        body = {"tier": "warm", "promote": "us-east", "demote": "eu-central", "dry_run": True}
        async with http.post(f"{daemon.base_url}/v1/failover", json=body) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
        async with http.post(
            f"{daemon.base_url}/v1/failover", json=body, headers=auth_headers("wrong")
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["detail"] == "wrong bearer token"
        async with http.get(f"{daemon.base_url}/metrics") as resp:
            text = await resp.text()
    assert 'cryptorun_admin_rejected_total{reason="no_token"} 1.0' in text
    assert 'cryptorun_admin_rejected_total{reason="bad_token"} 1.0' in text


async def test_errors_are_json_with_code_and_detail(region: RegionSpec) -> None:
    """Unknown paths give 404 JSON, bad query values 400 JSON, never HTML."""
    async with run_daemon_process(region.write()) as daemon, aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.base_url}/no/such/thing", headers=auth_headers()) as resp:
            assert resp.status == 404
            assert resp.content_type == "application/json"
            assert (await resp.json())["error"] == "not_found"
        async with http.get(f"{daemon.base_url}/v1/status?tier=lukewarm") as resp:
            assert resp.status == 400
            doc = await resp.json()
            assert doc == {
                "error": "bad_request",
                "detail": "tier 'lukewarm' is not one of hot, warm, cold",
            }
        async with http.get(f"{daemon.base_url}/v1/status?region=mars") as resp:
            assert resp.status == 400
            assert "region 'mars' is unknown" in (await resp.json())["detail"]
        async with http.put(f"{daemon.base_url}/healthz") as resp:
            assert resp.status == 405
            assert (await resp.json())["error"] == "method_not_allowed"


async def test_oversized_request_body_is_rejected_with_413(tmp_path: Path) -> None:
    """Bodies over admin.max_request_bytes are refused before any handler reads them."""
    spec, _ = two_regions(tmp_path)
    spec.sections["admin"] = {"max_request_bytes": 2048}
    async with run_daemon_process(spec.write()) as daemon, aiohttp.ClientSession() as http:
        async with http.post(
            f"{daemon.base_url}/v1/failover", data=b"x" * 10_000, headers=auth_headers()
        ) as resp:
            assert resp.status == 413
            doc = await resp.json()
            assert doc["error"] == "too_large"
            assert "exceeds the 2048-byte limit" in doc["detail"]


async def test_sigterm_shuts_down_gracefully_with_exit_zero(region: RegionSpec) -> None:
    """SIGTERM → ordered shutdown, exit 0, and the log says it stopped."""
    config = region.write()
    proc = start_daemon_process(config)
    try:
        log_path = config.parent / "eu-central.log"
        await wait_until_ready(region.base_url, proc=proc, log_path=log_path)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    log = (config.parent / "eu-central.log").read_text()
    assert '"event": "daemon stopped"' in log
    assert '"region": "eu-central"' in log


async def test_second_sigint_forces_exit(tmp_path: Path) -> None:
    """While a graceful shutdown waits for an in-flight request, a second SIGINT exits at once
    with 130 instead of waiting out admin.shutdown_timeout."""
    spec, _ = two_regions(tmp_path)
    spec.sections["admin"] = {"shutdown_timeout": "2m"}
    config = spec.write()
    log_path = config.parent / "eu-central.log"
    proc = start_daemon_process(config)
    try:
        await wait_until_ready(spec.base_url, proc=proc, log_path=log_path)
        # A request whose body never finishes arriving keeps a handler in flight, so the
        # graceful shutdown has something to wait for (up to the 2-minute deadline).
        _reader, writer = await asyncio.open_connection("127.0.0.1", spec.port)
        writer.write(
            b"POST /v1/failover HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b'\r\nContent-Length: 100\r\n\r\n{"tier": '
        )
        await writer.drain()
        async with aiohttp.ClientSession() as http, http.get(f"{spec.base_url}/healthz") as resp:
            assert resp.status == 200  # the loop has read the slow request's headers by now
        proc.send_signal(signal.SIGINT)
        deadline = asyncio.get_running_loop().time() + 20
        while '"event": "daemon stopping"' not in log_path.read_text():
            assert asyncio.get_running_loop().time() < deadline, "first SIGINT not handled"
            await asyncio.sleep(0.05)
        assert proc.poll() is None  # graceful shutdown is waiting for the slow request
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 20)
        writer.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130
    assert "second SIGINT: forcing exit" in log_path.read_text()


async def test_sd_notify_ready_watchdog_stopping(region: RegionSpec, tmp_path: Path) -> None:
    """Under NOTIFY_SOCKET the daemon sends READY=1 once bound, WATCHDOG=1 pings, STOPPING=1."""
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.setblocking(False)
    config = region.write()
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    proc = start_daemon_process(config, env=env)
    messages: list[str] = []
    loop = asyncio.get_running_loop()

    async def receive_until(predicate_text: str) -> None:
        while not any(predicate_text in m for m in messages):
            data = await asyncio.wait_for(loop.sock_recv(server, 4096), 20)
            messages.append(data.decode())

    try:
        await receive_until("READY=1")
        # After READY the admin server must already answer (READY means bound).
        async with aiohttp.ClientSession() as http, http.get(f"{region.base_url}/readyz") as resp:
            assert resp.status == 200
        watchdogs_before = messages.count("WATCHDOG=1")
        while messages.count("WATCHDOG=1") < watchdogs_before + 2:
            messages.append((await asyncio.wait_for(loop.sock_recv(server, 4096), 20)).decode())
        proc.send_signal(signal.SIGTERM)
        await receive_until("STOPPING=1")
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert messages.index("READY=1") < messages.index("STOPPING=1")
    assert any(m.startswith("STATUS=serving on 127.0.0.1:") for m in messages)


async def test_sighup_reloads_log_level_and_slo_and_reports_the_rest(tmp_path: Path) -> None:
    """SIGHUP applies log level and SLO changes live and names what needs a restart."""
    spec, _ = two_regions(tmp_path)
    config = spec.write()
    async with run_daemon_process(config) as daemon, aiohttp.ClientSession() as http:
        spec.rules[1]["lag_slo"] = "30s"
        spec.sections["log"] = {"level": "debug"}
        spec.sections["replication"] = {"max_concurrency": 2}
        spec.write()
        daemon.proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):  # the reload flag is polled once a second
            while '"event": "config reloaded"' not in daemon.log_text():
                await asyncio.sleep(0.05)
        async with http.get(f"{daemon.base_url}/v1/status?tier=warm") as resp:
            status = await resp.json()
        async with http.get(f"{daemon.base_url}/metrics") as resp:
            metrics = await resp.text()
    log = daemon.log_text()
    assert '"applied": ["log", "rules.lag_slo"]' in log
    assert '"needs_restart": ["replication"]' in log
    assert status["tiers"]["warm"]["rules"][0]["lag_slo_seconds"] == 30.0
    assert 'cryptorun_replication_slo_seconds{region="us-east",tier="warm"} 30.0' in metrics


async def test_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    """A wildcard listen address without a token file: exit 2 before binding anything."""
    path = tmp_path / "r.toml"
    path.write_text(
        f'region = "a"\n[admin]\nlisten = "0.0.0.0:{free_port()}"\n[storage]\nroot = "d"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "cryptorun_daemon", "daemon", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "admin.token_file: is required when admin.listen (0.0.0.0:" in result.stderr


async def test_port_in_use_fails_startup_with_exit_one(region: RegionSpec) -> None:
    """A second daemon on the same port fails clearly instead of hanging."""
    config = region.write()
    async with run_daemon_process(config):
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cryptorun_daemon", "daemon", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=config.parent,
            env={**os.environ},
        )
    assert result.returncode == 1
    assert "address already in use" in (result.stderr + result.stdout).lower()


async def test_cli_status_against_a_running_daemon(region: RegionSpec) -> None:
    """`cryptorun replication status` prints the daemon's view, as a table or JSON."""
    config = region.write()
    async with run_daemon_process(config) as daemon:
        human = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "cryptorun_daemon",
                "replication",
                "status",
                "--config",
                str(config),
                "--tier",
                "warm",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        as_json = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "cryptorun_daemon",
                "replication",
                "status",
                "--admin-url",
                daemon.base_url,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "CRYPTORUN_ADMIN_TOKEN": TOKEN},
        )
    assert human.returncode == 0, human.stderr
    assert "region eu-central" in human.stdout
    assert "[warm]" in human.stdout
    assert "[hot]" not in human.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["region"] == "eu-central"
