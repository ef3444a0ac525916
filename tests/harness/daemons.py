"""Start real daemons for tests: in-process (fast) or as real subprocesses.

Both bind 127.0.0.1 on ephemeral ports, use temp dirs and a fresh
``CollectorRegistry`` per daemon, and always shut down what they started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from cryptorun_daemon.config import Config, load_config
from cryptorun_daemon.daemon import Daemon
from tests.harness.admin import TOKEN, auth_headers, sample_value, scrape_metric
from tests.harness.net import free_port
from tests.harness.wait import eventually

REPO_ROOT = Path(__file__).resolve().parents[2]

#: A hot tier that journals and mirrors promptly but seals nothing during a test
#: (hour windows, 30 s grace): the crash and disk-fault tests read the journal.
STEADY_HOT = {
    "heartbeat_interval": "200ms",
    "fsync_interval": "50ms",
    "partition_length": "1h",
    "seal_grace": "30s",
}
#: A seeded synthetic feed of two markets at 500 records/s (trades and books).
SYNTHETIC_FEED = {
    "kind": "synthetic",
    "name": "syn",
    "venue": "synthetic",
    "rate": 500,
    "seed": 3,
    "symbols": ["BTC/USD", "ETH/USD"],
    "book_depth": 5,
}

# Kept importable from here for tests written before the harness was split by job
# (admin API helpers in admin.py, ports and proxies in net.py).
__all__ = [
    "TOKEN",
    "DaemonProcess",
    "RegionSpec",
    "auth_headers",
    "free_port",
    "run_daemon",
    "run_daemon_process",
    "sample_value",
    "scrape_metric",
    "start_daemon_process",
    "stop_process",
    "toml_value",
    "two_regions",
    "wait_until_ready",
]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. [admin] tokens = { ... }
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


@dataclass
class RegionSpec:
    """What a test says about one region; ``write`` turns it into a TOML file."""

    region: str
    port: int
    directory: Path
    peers: dict[str, int] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    feeds: list[dict[str, Any]] = field(default_factory=list)
    token: str | None = TOKEN
    #: "https": the admin listener and every peer URL use TLS (set the files in
    #: ``sections["admin"]`` and ``peer_tls``); ``peer_tls``: [peers] ca_file/cert/key.
    scheme: str = "http"
    peer_tls: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def storage_root(self) -> Path:
        return self.directory / "data"

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"region = {toml_value(self.region)}", "", "[admin]"]
        lines.append(f'listen = "127.0.0.1:{self.port}"')
        if self.token is not None:
            (self.directory / "admin.token").write_text(self.token + "\n")
            (self.directory / "admin.token").chmod(0o600)  # the daemon refuses a loose secret
            lines.append('token_file = "admin.token"')
        for key, value in self.sections.get("admin", {}).items():
            lines.append(f"{key} = {toml_value(value)}")
        lines += ["", "[storage]", 'root = "data"', "", "[peers]"]
        lines += [
            f'{name} = "{self.scheme}://127.0.0.1:{port}"' for name, port in self.peers.items()
        ]
        lines += [f"{key} = {toml_value(value)}" for key, value in self.peer_tls.items()]
        for name, values in self.sections.items():
            if name == "admin":
                continue
            lines += ["", f"[{name}]"]
            for key, value in values.items():
                if isinstance(value, dict):
                    continue
                lines.append(f"{key} = {toml_value(value)}")
            for key, value in values.items():
                if isinstance(value, dict):
                    lines += ["", f"[{name}.{key}]"]
                    lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        for table_name, items in (("rules", self.rules), ("feeds", self.feeds)):
            for item in items:
                lines += ["", f"[[{table_name}]]"]
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        path = self.directory / f"{self.region}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


def two_regions(
    tmp: Path,
    *,
    rules: Iterable[dict[str, Any]] | None = None,
    names: tuple[str, str] = ("eu-central", "us-east"),
) -> tuple[RegionSpec, RegionSpec]:
    """Two regions peered with each other; default rules: warm and cold from the first."""
    a_name, b_name = names
    a_port, b_port = free_port(), free_port()
    if rules is None:
        rules = [
            {"tier": "hot", "from": a_name, "to": [b_name], "lag_slo": "5s"},
            {"tier": "warm", "from": a_name, "to": [b_name], "lag_slo": "60s"},
            {"tier": "cold", "from": a_name, "to": [b_name], "lag_slo": "5m"},
        ]
    rules = list(rules)
    a = RegionSpec(a_name, a_port, tmp / a_name, peers={b_name: b_port}, rules=rules)
    b = RegionSpec(b_name, b_port, tmp / b_name, peers={a_name: a_port}, rules=rules)
    return a, b


@dataclass
class DaemonProcess:
    """A daemon running as a real ``python -m cryptorun_daemon daemon`` subprocess."""

    proc: subprocess.Popen[bytes]
    base_url: str
    config_path: Path
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def wait_until_ready(
    base_url: str,
    *,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Poll ``/readyz`` until 200; fail with the daemon's log if it dies or times out.

    ``ssl_context`` verifies an ``https://`` daemon (its CA).
    """

    def log() -> str:
        return log_path.read_text(errors="replace") if log_path and log_path.exists() else ""

    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def ready() -> bool:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode} before ready:\n{log()}")
            try:
                async with session.get(f"{base_url}/readyz") as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, OSError):
                return False

        await eventually(ready, f"daemon at {base_url} to be ready", timeout=timeout, detail=log)


def start_daemon_process(
    config_path: Path, *, env: Mapping[str, str] | None = None, log_name: str | None = None
) -> subprocess.Popen[bytes]:
    log_path = config_path.parent / (log_name or f"{config_path.stem}.log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "cryptorun_daemon", "daemon", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=config_path.parent,
        )


@contextlib.asynccontextmanager
async def run_daemon_process(
    config_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[DaemonProcess]:
    """Run a daemon subprocess until the block ends, then SIGTERM it (SIGKILL after 15 s)."""
    config = load_config(config_path)
    base_url = f"{config.admin.scheme}://127.0.0.1:{config.admin.port}"
    log_path = config_path.parent / f"{config_path.stem}.log"
    proc = start_daemon_process(config_path, env=env)
    handle = DaemonProcess(proc, base_url, config_path, log_path)
    try:
        await wait_until_ready(
            base_url, timeout=ready_timeout, proc=proc, log_path=log_path, ssl_context=ssl_context
        )
        yield handle
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.asynccontextmanager
async def run_daemon(config: Config | Path, **kwargs: Any) -> AsyncIterator[Daemon]:
    """Run a daemon in this process and event loop with its own metric registry."""
    if isinstance(config, Path):
        config = load_config(config)
    daemon = Daemon(config, registry=CollectorRegistry(), **kwargs)
    await daemon.startup()
    try:
        yield daemon
    finally:
        await daemon.shutdown()
