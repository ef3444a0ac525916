"""A real Prometheus scrapes two real daemons with the shipped config and rules.

Two daemons (eu-central, us-east) run as subprocesses; a real ``prometheus``
(Debian package ``prometheus``) is started on 127.0.0.1 with an ephemeral port
and a temporary TSDB, using ``deploy/prometheus/prometheus.yml`` with only the
targets (the daemons' ports), the intervals (1 s) and the paths of the CA and
the read token changed, and loading the
shipped ``recording.yml`` and ``alerts.yml``. The tests then ask Prometheus'
HTTP API for the contract's series, expecting the right labels for both
regions, and check that every rule loads and evaluates without error. The
daemons serve TLS from a private CA and want the read token on ``/metrics``
(``open_reads = false``), exactly as the shipped scrape config expects.

A missing binary skips locally and fails in CI. Nothing is timed: each check
polls until it holds or a generous deadline passes, and then reports what
Prometheus last answered along with its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.security.certs import init_certs
from cryptorun_daemon.security.tls import client_context
from tests.harness.daemons import RegionSpec, run_daemon_process, stop_process, two_regions
from tests.harness.net import free_port
from tests.harness.tools import require_binary
from tests.harness.wait import eventually

pytestmark = [pytest.mark.needs_prometheus, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "cryptorun-replication.json"
# The shipped config's placeholder targets, one per region.
SHIPPED_TARGETS = {"eu-central": "127.0.0.1:9100", "us-east": "127.0.0.1:9200"}
REGIONS = ("eu-central", "us-east")
DEADLINE = 60.0  # seconds; the first scrapes and rule evaluations arrive within a few


@dataclass
class PrometheusServer:
    """A running Prometheus: its API base URL, process and log."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class ScrapeSecrets:
    """The CA that signed the daemons' certificates and the read token Prometheus presents."""

    ca_file: Path
    read_token_file: Path


def write_test_config(tmp_path: Path, ports: dict[str, int], secrets: ScrapeSecrets) -> Path:
    """The shipped prometheus.yml, pointed at the test daemons and their CA and read token,
    scraping every second."""
    import yaml  # PyYAML: in the [test] extras (the unit rule tests read YAML too)

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["scrape_timeout"] = "1s"
    assert job["scheme"] == "https"
    assert job["authorization"]["type"] == "Bearer"
    job["tls_config"]["ca_file"] = str(secrets.ca_file)
    job["authorization"]["credentials_file"] = str(secrets.read_token_file)
    for static in job["static_configs"]:
        region = static["labels"]["region"]
        assert static["targets"] == [SHIPPED_TARGETS[region]]
        static["targets"] = [f"127.0.0.1:{ports[region]}"]
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML; no emitter needed
    return path


@contextlib.asynccontextmanager
async def run_prometheus(config_path: Path, tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    """Start Prometheus on a free loopback port and wait for /-/ready.

    Resource handling: the process is always stopped (SIGTERM, then SIGKILL);
    its TSDB and log live under ``tmp_path``.
    """
    binary = require_binary("prometheus", "prometheus")
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if process.poll() is not None:
                    pytest.fail(
                        f"prometheus exited with {process.returncode}:\n{server.log_tail()}"
                    )
                try:
                    async with http.get(f"{server.base_url}/-/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(
                ready,
                "prometheus answers /-/ready",
                timeout=DEADLINE,
                interval=0.25,
                detail=prometheus_state(server),
            )
        yield server
    finally:
        await asyncio.to_thread(stop_process, process, 15.0)


def prometheus_state(
    server: PrometheusServer, last: Callable[[], object] = lambda: None
) -> Callable[[], str]:
    """What a failed wait reports: the last answer seen and the tail of Prometheus' log."""
    return lambda: f"last answer: {last()}\nprometheus log:\n{server.log_tail()}"


async def api_get(
    http: aiohttp.ClientSession, server: PrometheusServer, path: str, **params: str
) -> Any:
    """``data`` of a Prometheus API answer; fails the test on an API error."""
    async with http.get(f"{server.base_url}{path}", params=params) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return body["data"]


async def query_until(
    http: aiohttp.ClientSession,
    server: PrometheusServer,
    promql: str,
    holds: Callable[[list[dict[str, Any]]], bool],
) -> list[dict[str, Any]]:
    """The instant-query result of ``promql`` once ``holds(result)`` is true."""
    result: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal result
        result = (await api_get(http, server, "/api/v1/query", query=promql))["result"]
        return holds(result)

    await eventually(
        check,
        f"query {promql!r}",
        timeout=DEADLINE,
        interval=0.25,
        detail=prometheus_state(server, lambda: result),
    )
    return result


def regions_in(result: list[dict[str, Any]]) -> set[str]:
    return {series["metric"].get("region", "") for series in result}


def both_regions(result: list[dict[str, Any]]) -> bool:
    return regions_in(result) == set(REGIONS)


@contextlib.asynccontextmanager
async def two_daemons_scraped(
    tmp_path: Path,
) -> AsyncIterator[tuple[PrometheusServer, RegionSpec, RegionSpec]]:
    """Two daemons with the default rules (warm/cold/hot from eu-central to us-east) and a
    Prometheus scraping both with the shipped config and rules."""
    eu, us = two_regions(tmp_path)
    issued = init_certs(tmp_path / "pki", REGIONS)
    read_token = tmp_path / "read.token"
    read_token.write_text("read-token-for-prometheus\n")
    read_token.chmod(0o600)
    for spec in (eu, us):
        cert, key = issued.regions[spec.region]
        spec.scheme = "https"
        spec.sections["admin"] = {
            "tls_cert": str(cert),
            "tls_key": str(key),
            "open_reads": False,
            "tokens": {"read_file": str(read_token)},
        }
        spec.peer_tls = {"ca_file": str(issued.ca_cert)}
    ready_ssl = client_context(issued.ca_cert)
    async with (
        run_daemon_process(eu.write(), ssl_context=ready_ssl),
        run_daemon_process(us.write(), ssl_context=ready_ssl),
    ):
        secrets = ScrapeSecrets(issued.ca_cert, read_token)
        config = write_test_config(tmp_path, {eu.region: eu.port, us.region: us.port}, secrets)
        async with run_prometheus(config, tmp_path) as server:
            yield server, eu, us


async def test_contract_series_arrive_with_region_labels_for_both_regions(
    tmp_path: Path,
) -> None:
    """Prometheus stores the contract's series from both daemons, labelled by region."""
    async with two_daemons_scraped(tmp_path) as (server, eu, us), aiohttp.ClientSession() as http:
        up = await query_until(http, server, 'up{job="cryptorun"} == 1', both_regions)
        assert {s["metric"]["instance"] for s in up} == {
            f"127.0.0.1:{eu.port}",
            f"127.0.0.1:{us.port}",
        }

        build = await query_until(http, server, "cryptorun_build_info", both_regions)
        assert {s["metric"]["version"] for s in build} == {"0.1.0"}

        corrupt = await query_until(
            http, server, 'cryptorun_data_consistency_errors_total{check="corrupt"}', both_regions
        )
        assert {s["value"][1] for s in corrupt} == {"0"}

        quarantine = await query_until(
            http, server, "cryptorun_quarantine_total", lambda r: len(r) == 2 * 3 * 3
        )
        assert {
            (s["metric"]["region"], s["metric"]["tier"], s["metric"]["kind"]) for s in quarantine
        } == {
            (region, tier, kind)
            for region in REGIONS
            for tier in ("hot", "warm", "cold")
            for kind in ("row", "file", "fenced")
        }

        hot = await query_until(http, server, "cryptorun_hot_records_total", lambda r: len(r) == 4)
        assert {(s["metric"]["region"], s["metric"]["origin"]) for s in hot} == {
            (region, origin) for region in REGIONS for origin in REGIONS
        }

        # The destination daemon reports lag; its own region label survives the scrape.
        lag = await query_until(
            http,
            server,
            'cryptorun_replication_lag_seconds{tier="warm",region="us-east",source="eu-central"}',
            lambda r: len(r) == 1,
        )
        assert lag[0]["metric"]["instance"] == f"127.0.0.1:{us.port}"
        assert "exported_region" not in lag[0]["metric"]

        ready = await query_until(http, server, "cryptorun_ready == 1", both_regions)
        assert len(ready) == 2

        # Both daemons export the us-east SLOs: labels keep the rule's destination.
        slo = await query_until(
            http, server, 'cryptorun_replication_slo_seconds{tier="warm"}', lambda r: len(r) == 2
        )
        assert regions_in(slo) == {"us-east"}
        assert {s["value"][1] for s in slo} == {"60"}


async def test_rules_load_and_evaluate_against_real_series(tmp_path: Path) -> None:
    """Every shipped rule is loaded and evaluates without error; recording rules produce the
    joined lag/SLO ratio; every dashboard query is valid PromQL on this server."""
    import yaml  # PyYAML: in the [test] extras

    shipped = {
        group["name"]: [rule.get("alert") or rule.get("record") for rule in group["rules"]]
        for name in ("recording.yml", "alerts.yml")
        for group in yaml.safe_load((PROMETHEUS_DIR / name).read_text())["groups"]
    }
    async with two_daemons_scraped(tmp_path) as (server, _, _), aiohttp.ClientSession() as http:
        groups: list[dict[str, Any]] = []

        async def all_rules_evaluated() -> bool:
            nonlocal groups
            groups = (await api_get(http, server, "/api/v1/rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return bool(rules) and all(rule["health"] != "unknown" for rule in rules)

        await eventually(
            all_rules_evaluated,
            "every rule evaluated once",
            timeout=DEADLINE,
            interval=0.25,
            detail=prometheus_state(server, lambda: groups),
        )
        loaded = {group["name"]: [rule["name"] for rule in group["rules"]] for group in groups}
        assert loaded == shipped
        errors = [
            (rule["name"], rule.get("lastError"))
            for group in groups
            for rule in group["rules"]
            if rule["health"] != "ok"
        ]
        assert not errors
        assert {Path(group["file"]).name for group in groups} == {"recording.yml", "alerts.yml"}

        ratio = await query_until(
            http,
            server,
            'cryptorun:replication_lag_over_slo:ratio{region="us-east"}',
            lambda r: len(r) == 3,
        )
        assert {s["metric"]["tier"] for s in ratio} == {"hot", "warm", "cold"}
        assert {s["metric"]["source"] for s in ratio} == {"eu-central"}

        dashboard = json.loads(DASHBOARD.read_text())
        panels = dashboard["panels"] + [
            nested for panel in dashboard["panels"] for nested in panel.get("panels", [])
        ]
        expressions = [target["expr"] for panel in panels for target in panel.get("targets", [])]
        expressions += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
        assert len(expressions) > 20
        for expr in expressions:
            promql = (
                expr.replace("$__rate_interval", "1m")
                .replace("$region", ".*")
                .replace("$tier", ".*")
            )
            await api_get(http, server, "/api/v1/query", query=promql)
