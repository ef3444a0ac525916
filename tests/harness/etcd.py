"""Start a real etcd (Debian ``etcd-server``) on loopback for a test, and tear it down.

Usage in a test module::

    from tests.harness.etcd import etcd_server  # pytest fixture: one etcd per test

    async def test_something(etcd_server: EtcdServer) -> None:
        store = EtcdStateStore([etcd_server.client_url], ...)

``shared_etcd_server`` (one per module) with ``etcd_prefix`` (unique per
test) is the faster pair when tests only need isolation by key prefix.
Outside pytest fixtures: ``with run_etcd(tmp_dir) as server:`` (sync) and
``async with running_etcd(tmp_dir) as server:`` (async; start and stop run in
a worker thread so the event loop keeps turning).

TLS: pass ``tls=EtcdTLS(ca, cert, key)`` and etcd serves https with
``--client-cert-auth`` (clients must present a certificate ``ca`` signed);
:func:`enable_auth` turns on etcd's user authentication (user ``root`` with
the ``root`` role), through the same JSON gateway the daemon uses.

Each server gets its own data folder and free ephemeral client and peer ports
on 127.0.0.1. Fault injection: :meth:`EtcdServer.pause` / :meth:`~EtcdServer.resume`
(SIGSTOP / SIGCONT), :meth:`~EtcdServer.kill` (SIGKILL) and
:meth:`~EtcdServer.restart` (same ports, same data folder). A missing binary
fails the test when ``CI=true`` (CI must exercise the real coordinator) and
skips it with a clear message otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.net import free_port
from tests.harness.tools import missing_tool

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3  # a probed free port can be taken by someone else before etcd binds it

# etcd refuses to start on architectures it does not officially support unless
# told so by this variable, whose value must name the Go architecture.
_GO_ARCH = {"aarch64": "arm64", "arm64": "arm64", "s390x": "s390x", "ppc64le": "ppc64le"}


@dataclass(frozen=True)
class EtcdTLS:
    """Files for an etcd serving https with client-certificate auth."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path  # what the harness itself presents (health checks, enable_auth)
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


@dataclass
class EtcdServer:
    """A running etcd: where to reach it and where it keeps data and logs."""

    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    tls: EtcdTLS | None = None

    def pause(self) -> None:
        """SIGSTOP: etcd keeps its sockets open but answers nothing (a hung coordinator)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and reap: etcd disappears without any shutdown."""
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        """Start etcd again on the same ports and data folder; return once healthy.

        Raises ``RuntimeError`` with the log tail if it does not come up.
        """
        _stop(self.process)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.args, stdout=log_file, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            if _healthy(self.client_url, self.tls):
                return
            time.sleep(0.1)
        _stop(self.process)
        raise RuntimeError(f"etcd did not come back on {self.client_url}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def etcd_binary() -> str | None:
    """Path of the etcd binary: ``$CRYPTORUN_ETCD_BIN``, else ``etcd`` on PATH."""
    explicit = os.environ.get("CRYPTORUN_ETCD_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("etcd") or (
        "/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None
    )


def require_etcd() -> str:
    """The etcd binary, or fail (CI) / skip (elsewhere) the calling test."""
    binary = etcd_binary()
    if binary is not None:
        return binary
    message = (
        "etcd binary not found: install the Debian package etcd-server "
        "(apt-get install etcd-server) or set CRYPTORUN_ETCD_BIN"
    )
    missing_tool(message)


def _healthy(client_url: str, tls: EtcdTLS | None = None) -> bool:
    context = tls.client_context() if tls is not None else None
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=1.0, context=context) as resp:
            return b'"true"' in resp.read()
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)  # a paused etcd cannot act on SIGTERM
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def start_etcd(
    base_dir: Path,
    binary: str | None = None,
    tls: EtcdTLS | None = None,
    extra_args: tuple[str, ...] = (),
) -> EtcdServer:
    """Start etcd under ``base_dir`` and return once ``/health`` says true.

    Raises ``RuntimeError`` with the tail of etcd's log if it does not come up.
    """
    binary = binary or require_etcd()
    last_error = ""
    for attempt in range(START_ATTEMPTS):
        client_port, peer_port = free_port(), free_port()
        client_url = f"{'https' if tls else 'http'}://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        data_dir = base_dir / f"etcd-{attempt}"
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = base_dir / f"etcd-{attempt}.log"
        # Drop ETCD_* from our environment: etcd reads them as flags.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        go_arch = _GO_ARCH.get(platform.machine().lower())
        if go_arch:
            env["ETCD_UNSUPPORTED_ARCH"] = go_arch
        args = [
            binary,
            "--name",
            "default",
            "--data-dir",
            str(data_dir),
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"default={peer_url}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ]
        if tls is not None:
            args += [
                "--client-cert-auth",
                "--trusted-ca-file",
                str(tls.ca),
                "--cert-file",
                str(tls.cert),
                "--key-file",
                str(tls.key),
            ]
        args += extra_args
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        server = EtcdServer(
            client_url, peer_url, data_dir, log_path, process, args=tuple(args), env=env, tls=tls
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _healthy(client_url, tls):
                return server
            time.sleep(0.1)
        _stop(process)
        last_error = server.log_tail()
    raise RuntimeError(f"etcd did not become healthy after {START_ATTEMPTS} tries:\n{last_error}")


@contextlib.contextmanager
def run_etcd(base_dir: Path | None = None) -> Iterator[EtcdServer]:
    """A healthy etcd for the ``with`` block; stopped (TERM, then KILL) afterwards."""
    with contextlib.ExitStack() as stack:
        if base_dir is None:
            base_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="etcd-")))
        server = start_etcd(base_dir)
        try:
            yield server
        finally:
            _stop(server.process)


def _gateway(server: EtcdServer, path: str, body: dict[str, str]) -> None:
    context = server.tls.client_context() if server.tls is not None else None
    request = urllib.request.Request(
        f"{server.client_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5.0, context=context) as resp:
        resp.read()


def enable_auth(server: EtcdServer, password: str) -> None:
    """Create user ``root`` with the ``root`` role and turn authentication on."""
    _gateway(server, "/v3/auth/role/add", {"name": "root"})
    _gateway(server, "/v3/auth/user/add", {"name": "root", "password": password})
    _gateway(server, "/v3/auth/user/grant", {"user": "root", "role": "root"})
    _gateway(server, "/v3/auth/enable", {})


@contextlib.asynccontextmanager
async def running_etcd(
    base_dir: Path | None = None,
    *,
    tls: EtcdTLS | None = None,
    extra_args: tuple[str, ...] = (),
) -> AsyncIterator[EtcdServer]:
    """Async twin of :func:`run_etcd`; start and stop run in a worker thread."""
    binary = require_etcd()  # skip/fail here, in the test's own frame
    with contextlib.ExitStack() as stack:
        if base_dir is None:
            base_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="etcd-")))
        server = await asyncio.to_thread(start_etcd, base_dir, binary, tls, extra_args)
        try:
            yield server
        finally:
            await asyncio.to_thread(_stop, server.process)


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd per test, in the test's temp folder (fails in CI when etcd is missing)."""
    require_etcd()
    with run_etcd(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def shared_etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for a whole test module (starting one costs ~1 s).

    Tests sharing it must keep to their own key prefix (see ``etcd_prefix``).
    """
    require_etcd()
    with run_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses, so tests can share one etcd server."""
    return f"/t/{uuid.uuid4().hex[:12]}"
