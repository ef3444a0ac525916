"""The chaos cluster: etcd, and per region a Kraken test server, a fault proxy and a daemon.

Layout of a run directory::

    config/admin.token  config/REGION.toml     what the harness wrote
    regions/REGION/mnt/      a size-limited tmpfs; storage.root is mnt/root
    regions/REGION/cwd/      the daemon's working directory (must stay empty)
    regions/REGION/clock     libfaketime offset file ("+0" until a clock jump)
    logs/NAME.log            every process's stdout+stderr
    etcd/                    etcd's data
    proxy-rN.sock            fault proxy control sockets

Processes run inside the namespaces via ``ip netns exec`` (which execs the
command, so the PID we hold is the process itself: SIGKILL/SIGSTOP reach it).
A harness-level supervisor plays systemd: a daemon that exits without the
nemesis having killed it is logged as an unexpected ``exit`` in the history
and restarted after :data:`RESTART_DELAY`; a daemon the nemesis killed is
restarted when the nemesis's hold time is over.

Error handling: a process that cannot start raises :class:`ClusterError`
with its log tail. Resource handling: :meth:`Cluster.stop` terminates every
process it started (SIGCONT first, then SIGTERM, then SIGKILL after a
deadline), and the caller runs :func:`tests.chaos.netns.cleanup` after it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos import netns
from tests.chaos.history import History

REGIONS = ("eu-central", "us-east", "ap-south")
BOOTSTRAP_PRIMARY = REGIONS[0]
ADMIN_PORT = 9100
KRAKEN_PORT = 8765
ETCD_PORT = 2379
PROXY_PORT_BASE = 9200  # region a reaches region b at 127.0.0.1:(9200 + b) in its namespace
SYMBOLS = ("BTC/USD", "ETH/USD")
KRAKEN_RATE = 4.0  # book updates per second per symbol: light load on 2 shared cores
TMPFS_MB = 160
RESTART_DELAY = 5.0  # as the systemd unit's RestartSec (deploy/systemd)
FAILPOINT_EXIT_CODE = 86  # cryptorun_daemon.runtime.failpoints.EXIT_CODE (on its branch)
COVERAGE_ENV = ("COVERAGE_", "COV_CORE_")
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

# Tuned for minutes, like the demo: short windows so sealing, re-sealing and
# warm replication happen many times per run; a short lease so a paused or
# isolated primary is replaced within seconds.
HOT_SLO = 5.0
WARM_SLO = 20.0
COLD_SLO = 300.0
LEASE_TTL = 4.0
PARTITION_LENGTH = 20.0
SEAL_GRACE = 3.0
# Journal segments roll at 1 MiB (a minute or two of this cluster's traffic), so the
# sealer trims them many times a run; tests/chaos/journal_archive.py keeps copies
# for the checker.
SEGMENT_BYTES = 1 << 20
AUTO_FAILOVER_MIN_INTERVAL = 10.0


class ClusterError(RuntimeError):
    """A cluster process failed to start or become ready."""


def node_of(region: str) -> int:
    """Network node number of a region (1‥3)."""
    return REGIONS.index(region) + 1


def admin_url(region: str) -> str:
    """The region's admin URL as the observer (root namespace) reaches it."""
    return f"http://{netns.address(node_of(region), netns.ROOT_NODE)}:{ADMIN_PORT}"


def etcd_url_from(node: int) -> str:
    """etcd's client URL as seen from ``node`` (its own link to etcd)."""
    return f"http://{netns.address(netns.ETCD_NODE, node)}:{ETCD_PORT}"


def faketime_available() -> bool:
    """True when Debian's libfaketime is installed."""
    return LIBFAKETIME.is_file()


@dataclass
class Proc:
    """One process of the cluster, restartable with the same command."""

    name: str
    node: int
    argv: list[str]
    log_path: Path
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # Set by the nemesis: the exit that follows is expected; restart at this monotonic time.
    hold_until: float | None = None
    paused: bool = False
    failpoint_armed: bool = False  # started with CRYPTORUN_FAILPOINTS: an exit 86 is expected
    extra_env: dict[str, str] = field(default_factory=dict)  # for the next start only

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        # Not under the test command's coverage: tracing would slow the cluster the run
        # judges for liveness, and its data files would land in the daemon's working
        # directory, which the filesystem invariant requires to stay empty.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(COVERAGE_ENV)}
        env = {**inherited, "PYTHONUNBUFFERED": "1", **self.env, **self.extra_env}
        self.failpoint_armed = "CRYPTORUN_FAILPOINTS" in self.extra_env
        self.extra_env = {}
        with self.log_path.open("ab") as log_file:
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", netns.ns_name(self.node), *self.argv],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
            )
        self.starts += 1
        self.paused = False

    def signal(self, signum: int) -> bool:
        if not self.running():
            return False
        assert self.popen is not None
        try:
            os.kill(self.popen.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """Builds the namespaces, writes configs, starts and supervises every process."""

    def __init__(self, run_dir: Path, history: History, *, seed: int) -> None:
        self.run_dir = run_dir
        self.history = history
        self.seed = seed
        self.token = secrets.token_urlsafe(24)
        self.daemons: dict[str, Proc] = {}
        self.krakens: dict[str, Proc] = {}
        self.proxies: dict[str, Proc] = {}
        self.etcd: Proc | None = None
        self.unexpected_exits: list[dict[str, object]] = []
        self.use_faketime = faketime_available()

    # -- layout -------------------------------------------------------------------
    def region_dir(self, region: str) -> Path:
        return self.run_dir / "regions" / region

    def mount_dir(self, region: str) -> Path:
        return self.region_dir(region) / "mnt"

    def storage_root(self, region: str) -> Path:
        return self.mount_dir(region) / "root"

    def clock_file(self, region: str) -> Path:
        return self.region_dir(region) / "clock"

    def proxy_socket(self, region: str) -> Path:
        return self.run_dir / f"proxy-r{node_of(region)}.sock"

    def config_path(self, region: str) -> Path:
        return self.run_dir / "config" / f"{region}.toml"

    # -- build --------------------------------------------------------------------
    def build(self) -> None:
        """Namespaces, links, tmpfs roots, configs; then start every process and wait."""
        for sub in ("config", "logs", "etcd"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        netns.build(len(REGIONS))
        token_path = self.run_dir / "config" / "admin.token"
        token_path.write_text(self.token + "\n", encoding="utf-8")
        token_path.chmod(0o600)
        for region in REGIONS:
            (self.region_dir(region) / "cwd").mkdir(parents=True, exist_ok=True)
            netns.mount_tmpfs(self.mount_dir(region), TMPFS_MB)
            self.storage_root(region).mkdir()
            self.clock_file(region).write_text("+0\n", encoding="utf-8")
            self.config_path(region).write_text(self.region_config(region), encoding="utf-8")
        self._start_etcd()
        for region in REGIONS:
            self._start_region(region)
        deadline = time.monotonic() + 90
        for region in REGIONS:
            self.wait_ready(region, deadline)

    def region_config(self, region: str) -> str:
        """The TOML config of one region (etcd store, auto failover, tiny windows)."""
        node = node_of(region)
        peers = "\n".join(
            f'{peer} = "http://127.0.0.1:{PROXY_PORT_BASE + node_of(peer)}"'
            for peer in REGIONS
            if peer != region
        )
        symbols = ", ".join(f'"{s}"' for s in SYMBOLS)
        others = [r for r in REGIONS if r != BOOTSTRAP_PRIMARY]
        hot_rules = "".join(
            _rule("hot", src, [d for d in REGIONS if d != src], HOT_SLO) for src in REGIONS
        )
        return f"""\
# chaos cluster (seed {self.seed}): {region}. Written by tests/chaos/cluster.py.
region = "{region}"

[admin]
listen = "0.0.0.0:{ADMIN_PORT}"
token_file = "admin.token"
# Plain HTTP on purpose: the addresses exist only inside the run's own namespaces.
allow_plaintext = true
shutdown_timeout = "5s"

[storage]
root = "{self.storage_root(region)}"

[peers]
{peers}

[state]
backend = "etcd"
etcd_endpoints = ["{etcd_url_from(node)}"]
lease_ttl = "{LEASE_TTL:g}s"
auto_failover = true
auto_failover_min_interval = "{AUTO_FAILOVER_MIN_INTERVAL:g}s"

[hot]
partition_length = "{PARTITION_LENGTH:g}s"
seal_grace = "{SEAL_GRACE:g}s"
# Rolled and trimmed during the run; the harness archives rolled segments.
segment_bytes = {SEGMENT_BYTES}

[[feeds]]
kind = "kraken"
name = "kraken"
url = "ws://127.0.0.1:{KRAKEN_PORT}"
symbols = [{symbols}]
heartbeat_timeout = "5s"

[replication]
request_timeout = "5s"
peer_down_after = "10s"

[log]
format = "json"

{hot_rules}
{_rule("warm", BOOTSTRAP_PRIMARY, others, WARM_SLO)}
{_rule("cold", BOOTSTRAP_PRIMARY, others, COLD_SLO)}"""

    def _start_etcd(self) -> None:
        node = netns.ETCD_NODE
        self.etcd = Proc(
            "etcd",
            node,
            [
                "etcd",
                "--name=chaos",
                f"--data-dir={self.run_dir / 'etcd' / 'data'}",
                f"--listen-client-urls=http://0.0.0.0:{ETCD_PORT}",
                f"--advertise-client-urls={etcd_url_from(1)}",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=chaos=http://127.0.0.1:2380",
            ],
            self.run_dir / "logs" / "etcd.log",
            self.run_dir / "etcd",
        )
        self.etcd.start()
        host = netns.address(netns.ETCD_NODE, netns.ROOT_NODE)
        _wait_tcp(self.etcd, host, ETCD_PORT, time.monotonic() + 30)

    def _start_region(self, region: str) -> None:
        node = node_of(region)
        logs = self.run_dir / "logs"
        cwd = self.region_dir(region) / "cwd"
        kraken = Proc(
            f"kraken-{region}",
            node,
            [
                sys.executable,
                "-m",
                "cryptorun_daemon.ingest.kraken.testserver",
                f"--port={KRAKEN_PORT}",
                f"--rate={KRAKEN_RATE:g}",
                f"--seed={self.seed}",
                "--symbols",
                *SYMBOLS,
            ],
            logs / f"kraken-{region}.log",
            cwd,
        )
        links = [
            f"--link={peer}:{PROXY_PORT_BASE + node_of(peer)}:"
            f"{netns.address(node_of(peer), node)}:{ADMIN_PORT}"
            for peer in REGIONS
            if peer != region
        ]
        proxy = Proc(
            f"proxy-{region}",
            node,
            [
                sys.executable,
                "-m",
                "tests.chaos.fault_proxy",
                f"--control={self.proxy_socket(region)}",
                *links,
            ],
            logs / f"proxy-{region}.log",
            Path.cwd(),
        )
        env = {}
        if self.use_faketime:
            # Only the wall clock jumps (as an NTP step does); monotonic time is real.
            env = {
                "LD_PRELOAD": str(LIBFAKETIME),
                "FAKETIME_TIMESTAMP_FILE": str(self.clock_file(region)),
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "FAKETIME_CACHE_DURATION": "1",
            }
        daemon = Proc(
            region,
            node,
            [
                sys.executable,
                "-m",
                "cryptorun_daemon",
                "daemon",
                "--config",
                str(self.config_path(region)),
            ],
            logs / f"{region}.log",
            cwd,
            env=env,
        )
        self.krakens[region], self.proxies[region], self.daemons[region] = kraken, proxy, daemon
        self.proxy_socket(region).unlink(missing_ok=True)
        kraken.start()
        proxy.start()
        deadline = time.monotonic() + 30
        while not self.proxy_socket(region).exists():
            if not proxy.running() or time.monotonic() > deadline:
                raise ClusterError(f"fault proxy of {region} did not start:\n{proxy.log_tail()}")
            time.sleep(0.05)
        daemon.start()

    def wait_ready(self, region: str, deadline: float) -> None:
        """Poll ``/readyz`` of a region until 200 (raises with the log tail on time-out)."""
        daemon = self.daemons[region]
        while not http_ready(region):
            if time.monotonic() > deadline:
                raise ClusterError(f"{region} not ready:\n{daemon.log_tail()}")
            if not daemon.running() and daemon.hold_until is None:
                raise ClusterError(f"{region} exited while starting:\n{daemon.log_tail()}")
            time.sleep(0.2)

    # -- supervision ----------------------------------------------------------------
    def supervise_once(self) -> None:
        """Restart exited daemons: unexpected exits are recorded, nemesis kills wait their hold."""
        now = time.monotonic()
        for region, daemon in self.daemons.items():
            if daemon.running():
                continue
            if daemon.hold_until is not None:
                if now >= daemon.hold_until:
                    daemon.hold_until = None
                    daemon.start()
                    self.history.append("event", event="restart", target=region, pid=daemon.pid)
                continue
            assert daemon.popen is not None
            code = daemon.popen.returncode
            if daemon.failpoint_armed and code == FAILPOINT_EXIT_CODE:
                daemon.failpoint_armed = False
                self.history.append("event", event="failpoint_exit", target=region, code=code)
                daemon.hold_until = now + RESTART_DELAY
                continue
            entry = {"target": region, "code": code, "log_tail": daemon.log_tail(8)}
            self.unexpected_exits.append({"mono": self.history.now(), **entry})
            self.history.append("event", event="exit", **entry)
            daemon.hold_until = now + RESTART_DELAY

    def stop(self) -> None:
        """Stop every process: daemons first (graceful), then feeds, proxies, etcd."""
        for group in (self.daemons, self.krakens, self.proxies):
            for proc in group.values():
                proc.hold_until = None
                proc.stop()
        if self.etcd is not None:
            self.etcd.stop()

    def describe(self) -> dict[str, object]:
        """What ran where (for report.json)."""
        return {
            "regions": {
                r: {
                    "namespace": netns.ns_name(node_of(r)),
                    "admin_url": admin_url(r),
                    "storage_root": str(self.storage_root(r)),
                    "daemon_starts": self.daemons[r].starts if r in self.daemons else 0,
                }
                for r in REGIONS
            },
            "etcd": etcd_url_from(netns.ROOT_NODE),
            "faketime": self.use_faketime,
        }


def http_ready(region: str) -> bool:
    """GET /readyz → 200, from the root namespace over the observer link."""
    try:
        with urllib.request.urlopen(f"{admin_url(region)}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_tcp(proc: Proc, host: str, port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if not proc.running() or time.monotonic() > deadline:
            raise ClusterError(f"{proc.name} not reachable at {host}:{port}:\n{proc.log_tail()}")
        time.sleep(0.1)


def _rule(tier: str, src: str, dst: list[str], slo: float) -> str:
    to = ", ".join(f'"{d}"' for d in dst)
    return f'[[rules]]\ntier = "{tier}"\nfrom = "{src}"\nto = [{to}]\nlag_slo = "{slo:g}s"\n\n'


def dump_json(path: Path, doc: object) -> None:
    """Write a JSON document (sorted keys, indented) for the run directory."""
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
