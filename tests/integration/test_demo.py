"""``cryptorun demo``: real subprocesses end to end, clean stops, clear failures.

The slow tests run ``python -m cryptorun_daemon demo`` exactly as a user does
and judge it only by what it prints, its exit code and what it leaves in
``--dir``; nothing about timing is asserted.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cryptorun_daemon.config import load_config
from cryptorun_daemon.demo.configs import (
    PARTITION_LENGTH,
    PRIMARY,
    REGIONS,
    REPLICA,
    SEAL_GRACE,
    DemoLayout,
    write_demo_configs,
)
from cryptorun_daemon.demo.runner import SEAL_ROUND_SECONDS, seconds_until_quiet
from tests.harness.daemons import REPO_ROOT
from tests.harness.s3 import require_moto

DEMO_DURATION = 90  # the command; one-minute partitions seal within ~66 s
LIVE_LINE = re.compile(r"^\d\d:\d\d:\d\d  (eu-central|us-east) +hot [\d,]+ own \+ ", re.MULTILINE)


def demo_command(directory: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cryptorun_daemon", "demo", "--dir", str(directory), *extra]


def start_demo(directory: Path) -> subprocess.Popen[str]:
    """The demo without ``--duration``: it runs until it is signalled."""
    return subprocess.Popen(
        demo_command(directory),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_until(proc: subprocess.Popen[str], done: Callable[[str], bool], timeout: float) -> str:
    """Everything the demo printed until ``done(output)``; fails with the output otherwise."""
    assert proc.stdout is not None
    output = ""
    deadline = time.monotonic() + timeout
    while not done(output):
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"demo never got there (exit {proc.poll()}):\n{output}")
        output += line
    return output


def sealed_partitions(root: Path) -> dict[str, Path]:
    """``partition path → directory`` of every sealed warm partition under a storage root."""
    warm = root / "warm"
    return {str(m.parent.relative_to(warm)): m.parent for m in warm.rglob("_SUCCESS")}


def hot_records(metrics_text: str) -> dict[tuple[str, str], float]:
    """``(region, origin) → cryptorun_hot_records_total`` from a Prometheus exposition."""
    return {
        (s.labels["region"], s.labels["origin"]): s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == "cryptorun_hot_records_total"
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_configs_load_as_valid_region_configs(tmp_path: Path) -> None:
    """Both written configs pass the real loader: eu-central is the warm primary, us-east its
    replica, each ingests the same Kraken URL and peers with the other, partitions are short."""
    layout = DemoLayout(
        tmp_path, ports={PRIMARY: 19001, REPLICA: 19002}, kraken_url="ws://127.0.0.1:19003/v2"
    )
    paths = write_demo_configs(layout)
    for scope in ("operator", "peer", "read"):
        assert (tmp_path / f"{scope}.token").stat().st_mode & 0o077 == 0
    assert (tmp_path / "tls" / "ca.pem").is_file()
    for region in REGIONS:
        config = load_config(paths[region])
        peer = next(r for r in REGIONS if r != region)
        assert config.region == region
        assert config.peers == {peer: layout.admin_url(peer)}
        assert layout.admin_url(peer).startswith("https://")
        assert config.admin.tls
        assert not config.admin.open_reads
        assert config.peer_tls.ca_file == (tmp_path / "tls" / "ca.pem").resolve()
        assert config.hot.partition_length == PARTITION_LENGTH
        assert [(f.kind, f.url) for f in config.feeds] == [("kraken", layout.kraken_url)]
        assert {(r.from_region, r.to_regions) for r in config.rules_for("hot")} == {
            (PRIMARY, (REPLICA,)),
            (REPLICA, (PRIMARY,)),
        }
        assert [(r.from_region, r.to_regions) for r in config.rules_for("warm")] == [
            (PRIMARY, (REPLICA,))
        ]


def test_object_store_demo_configs_put_warm_and_cold_in_one_bucket_per_region(
    tmp_path: Path,
) -> None:
    """With --object-store each region keeps warm and cold in its own bucket on the local
    server, the replica names the primary's bucket as its source, and no config holds a
    credential."""
    layout = DemoLayout(
        tmp_path,
        ports={PRIMARY: 19001, REPLICA: 19002},
        kraken_url="ws://127.0.0.1:19003/v2",
        object_store="http://127.0.0.1:19004",
    )
    paths = write_demo_configs(layout)
    for region in REGIONS:
        config = load_config(paths[region])
        assert sorted(config.storage.tiers) == ["cold", "warm"]
        for backend in config.storage.tiers.values():
            assert backend.url == f"s3://cryptorun-demo-{region}/tiers"
            assert backend.endpoint_url == "http://127.0.0.1:19004"
        assert "cryptorun-demo-local-only" not in paths[region].read_text()
    replica = load_config(paths[REPLICA])
    assert replica.storage.sources["eu-central"]["cold"].bucket == "cryptorun-demo-eu-central"
    assert load_config(paths[PRIMARY]).storage.sources == {}


@pytest.mark.slow
def test_object_store_demo_commits_warm_and_cold_partitions_into_both_buckets(
    tmp_path: Path,
) -> None:
    """``demo --object-store --duration 90`` starts the local S3 server, exits 0, and reports
    the primary's sealed warm partitions in both regions' buckets (the replica's copied
    server-side from the primary's), and yesterday's three archived cold partitions (sealed
    through the seal endpoint) in both buckets too."""
    require_moto()
    result = subprocess.run(
        demo_command(tmp_path, "--object-store", "--duration", str(DEMO_DURATION)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_DURATION + 150,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    found = dict(
        re.findall(r"(eu-central|us-east)\s+(\d+) warm partitions sealed in s3://", output)
    )
    assert set(found) == {"eu-central", "us-east"}, output
    assert int(found["eu-central"]) > 0
    assert found["us-east"] == found["eu-central"]
    cold = dict(re.findall(r"(eu-central|us-east)\s+(\d+) cold partitions sealed in s3://", output))
    assert cold == {"eu-central": "3", "us-east": "3"}, output
    assert "daily partitions of simulated trades" in output
    assert "s3 exit 0" in output


def test_final_check_waits_out_the_sealing_round() -> None:
    """Just before or after a seal moment the final comparison waits; elsewhere it does not."""
    seal_moment = 10 * PARTITION_LENGTH + SEAL_GRACE
    assert seconds_until_quiet(seal_moment + 1.0) == pytest.approx(SEAL_ROUND_SECONDS - 1.0)
    assert seconds_until_quiet(seal_moment - 0.5) == pytest.approx(0.5 + SEAL_ROUND_SECONDS)
    assert seconds_until_quiet(seal_moment + PARTITION_LENGTH / 2) == 0.0


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_leaves_replicated_data(tmp_path: Path) -> None:
    """``demo --duration 90`` exits 0 after printing the admin URLs, the commands and live
    lines; warm partitions sealed at eu-central sit at us-east with byte-identical manifests;
    the final metric snapshots count hot records of both origins in both regions."""
    result = subprocess.run(
        demo_command(tmp_path, "--duration", str(DEMO_DURATION)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_DURATION + 150,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    for region in REGIONS:
        port = load_config(tmp_path / f"{region}.toml").admin.port
        assert f"https://127.0.0.1:{port}" in output
    assert f"--cacert {tmp_path / 'tls' / 'ca.pem'}" in output
    assert "/v1/failover" in output
    assert '"dry_run":true' in output
    assert {m.group(1) for m in LIVE_LINE.finditer(output)} == set(REGIONS), output
    assert "stopped: eu-central exit 0, us-east exit 0, kraken exit 0" in output
    assert "manifests identical: yes" in output

    primary = sealed_partitions(tmp_path / "data" / PRIMARY)
    replica = sealed_partitions(tmp_path / "data" / REPLICA)
    assert primary, output
    assert set(replica) == set(primary)
    for path, directory in primary.items():
        manifest = directory / "_manifest.json"
        assert digest(replica[path] / "_manifest.json") == digest(manifest), path
        assert '"writer_region": "eu-central"' in manifest.read_text()

    for region in REGIONS:
        counts = hot_records((tmp_path / f"metrics-{region}.txt").read_text())
        for origin in REGIONS:
            assert counts[(region, origin)] > 0, (region, origin)


@pytest.mark.slow
def test_ctrl_c_stops_every_process_and_exits_zero(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) during the live view stops both daemons and the Kraken server with
    exit 0 each, and the demo itself exits 0."""
    proc = start_demo(tmp_path)
    read_until(proc, lambda out: "  us-east     hot" in out, timeout=60)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, rest
    assert "stopped: eu-central exit 0, us-east exit 0, kraken exit 0" in rest


@pytest.mark.slow
def test_a_daemon_that_dies_fails_the_demo_with_its_log_tail(tmp_path: Path) -> None:
    """When a region daemon dies the demo says which, prints the end of its log, stops the
    others and exits 1."""
    proc = start_demo(tmp_path)
    read_until(proc, lambda out: "  us-east     hot" in out, timeout=60)
    config = str(tmp_path / f"{REPLICA}.toml")
    victims = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and config in _cmdline(entry)
    ]
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, rest
    assert f"demo failed: {REPLICA} exited (exit code -9)" in rest
    assert f"last lines of {tmp_path / 'us-east.log'}" in rest
    assert '"region": "us-east"' in rest.split("last lines of", 1)[1]  # the tail itself
    assert "eu-central exit 0" in rest


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:  # the process ended while we looked
        return ""
