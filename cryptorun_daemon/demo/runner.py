"""``cryptorun demo``: two region daemons on loopback, started as real processes.

Each region gets its own config, token and storage under ``--dir``; the demo
prints the admin URLs and the commands to try, then waits for Ctrl-C or
``--duration`` and stops both daemons with SIGTERM, leaving the data behind.
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

REGIONS = ("eu-central", "us-east")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_demo_configs(directory: Path, ports: dict[str, int], token: str) -> dict[str, Path]:
    """One TOML per region: eu-central is warm/cold primary, us-east its replica."""
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "admin.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    paths: dict[str, Path] = {}
    for region in REGIONS:
        peer = next(r for r in REGIONS if r != region)
        text = f"""region = "{region}"

[admin]
listen = "127.0.0.1:{ports[region]}"
token_file = "admin.token"

[storage]
root = "data/{region}"

[peers]
{peer} = "http://127.0.0.1:{ports[peer]}"

[[rules]]
tier = "hot"
from = "{region}"
to = ["{peer}"]
lag_slo = "5s"

[[rules]]
tier = "warm"
from = "eu-central"
to = ["us-east"]
lag_slo = "60s"

[[rules]]
tier = "cold"
from = "eu-central"
to = ["us-east"]
lag_slo = "5m"
"""
        path = directory / f"{region}.toml"
        path.write_text(text)
        paths[region] = path
    return paths


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:  # noqa: S310 - loopback URL we built
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_demo(
    *, directory: str | None, duration: float | None, kraken_url: str | None, out: TextIO
) -> int:
    """Start both daemons, print where they are, wait, stop them. Returns the exit code."""
    if kraken_url is not None:
        out.write("note: --kraken-url is accepted but exchange ingest is not in this build yet\n")
    base = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="cryptorun-demo-"))
    ports = {region: _free_port() for region in REGIONS}
    token = secrets.token_urlsafe(24)
    configs = write_demo_configs(base, ports, token)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = signal.signal(signal.SIGINT, on_signal)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        for region, config in configs.items():
            log = (base / f"{region}.log").open("ab")
            procs[region] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "cryptorun_daemon", "daemon", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=base,
                start_new_session=True,  # Ctrl-C goes to the demo, which stops daemons in order
            )
            log.close()
        urls = {region: f"http://127.0.0.1:{ports[region]}" for region in REGIONS}
        deadline = time.monotonic() + 30
        while not all(_ready(u) for u in urls.values()):
            dead = [r for r, p in procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline or stop_requested:
                out.write(f"demo failed: daemons did not become ready ({', '.join(dead)}); "
                          f"see logs in {base}\n")
                return 1
            time.sleep(0.1)
        out.write(f"demo data and logs: {base}\n")
        for region, url in urls.items():
            out.write(f"  {region:<11} admin {url}  (log {base / (region + '.log')})\n")
        eu = urls["eu-central"]
        out.write("\ntry:\n")
        out.write(f"  curl -s {eu}/v1/status | python3 -m json.tool\n")
        out.write(f"  curl -s {eu}/metrics | grep ^cryptorun_\n")
        out.write(f"  cryptorun replication status --config {configs['eu-central']}\n")
        out.write("\nCtrl-C to stop" + (f" (or wait {duration:g}s)" if duration else "") + "\n")
        out.flush()
        ends = time.monotonic() + duration if duration else None
        while not stop_requested and (ends is None or time.monotonic() < ends):
            dead = [r for r, p in procs.items() if p.poll() is not None]
            if dead:
                out.write(f"demo failed: {', '.join(dead)} exited; see logs in {base}\n")
                return 1
            time.sleep(0.2)
        return 0
    finally:
        codes = {}
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for region, proc in procs.items():
            try:
                codes[region] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[region] = proc.wait()
        if codes:
            out.write("stopped: " + ", ".join(f"{r} exit {c}" for r, c in codes.items()) + "\n")
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
