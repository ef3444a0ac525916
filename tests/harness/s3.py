"""A real S3 endpoint for tests: moto's server as a process on 127.0.0.1, one bucket per region.

Usage::

    from tests.harness.s3 import S3Server, s3_server, aws_credentials  # pytest fixtures

    async def test_x(s3_server: S3Server, aws_credentials: str) -> None:
        bucket = s3_server.bucket("eu-central")     # created on first use
        tier = s3_server.tier_config("eu-central")  # an ObjectStoreTier pointing at it

The server listens on an ephemeral loopback port (moto binds port 0 is not
supported, so a free port is picked and the start retried if it was taken).
``aws_credentials`` puts test credentials in the environment (the standard
AWS way the daemon reads them) and hides any real ones of the machine
(shared files, instance metadata); its value is the secret, so a test can
assert it never reaches a log. A missing moto fails the test when
``CI=true`` and skips it elsewhere (``tests/harness/tools.missing_tool``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path

import pytest

from cryptorun_daemon.config import ObjectStoreTier
from tests.harness.net import free_port
from tests.harness.tools import missing_tool

START_TIMEOUT = 30.0
# What the credentials fixture puts in the environment; distinctive so a log
# search for it cannot match anything else.
TEST_ACCESS_KEY = "AKIACRYPTORUNTEST01"
TEST_SECRET_KEY = "cryptorun-test-secret-Zq81pXv0"


def bucket_name(region: str) -> str:
    """The bucket of ``region``'s tiers on the test server."""
    return f"cryptorun-{region}"


@dataclass
class S3Server:
    """A running moto server; ``endpoint`` is its ``http://127.0.0.1:PORT``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _buckets: set[str] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, endpoint: str | None = None) -> object:
        """A botocore S3 client for test set-up and inspection (not the code under test)."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=TEST_ACCESS_KEY,
            aws_secret_access_key=TEST_SECRET_KEY,
            config=botocore.config.Config(retries={"total_max_attempts": 1}),
        )

    def bucket(self, region: str) -> str:
        """Create (once) and name ``region``'s bucket."""
        name = bucket_name(region)
        if name not in self._buckets:
            self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
            self._buckets.add(name)
        return name

    def tier_config(
        self, region: str, *, prefix: str = "data", endpoint: str | None = None, **overrides: object
    ) -> ObjectStoreTier:
        """An object-store tier config on ``region``'s bucket (through ``endpoint`` if given)."""
        bucket = self.bucket(region)
        base = ObjectStoreTier(
            url=f"s3://{bucket}/{prefix}",
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint or self.endpoint,
            region="us-east-1",
            allow_http=True,
            request_timeout=10.0,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL the server (its buckets are gone with it: moto keeps them in memory)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def tier_section(config: ObjectStoreTier, **extra: object) -> dict[str, object]:
    """The ``[storage.tiers.T]`` section of a daemon config for ``config`` (loopback HTTP)."""
    return {
        "url": config.url,
        "endpoint_url": config.endpoint_url,
        "region": config.region,
        "allow_http": True,
        **extra,
    }


def require_moto() -> None:
    """Fail (CI) or skip (elsewhere) unless ``moto[server]`` is importable."""
    if find_spec("moto") is None or find_spec("flask") is None:
        missing_tool("moto[server] is not installed: pip install -e '.[test]'")


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_s3_server(log_dir: Path) -> S3Server:
    """Start moto's server on a free loopback port and wait until it answers."""
    require_moto()
    for _attempt in range(3):
        port = free_port()
        log_path = log_dir / f"moto-{port}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = S3Server(process=process, port=port, log_path=log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _ready(server.endpoint):
                return server
            time.sleep(0.1)
        stop_s3_server(server)  # port taken meanwhile, or too slow: try another
    raise RuntimeError(f"moto server did not start; see {log_dir}")


def stop_s3_server(server: S3Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


@contextlib.contextmanager
def running_s3_server(log_dir: Path) -> Iterator[S3Server]:
    server = start_s3_server(log_dir)
    try:
        yield server
    finally:
        stop_s3_server(server)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto server per test module (starting one costs about a second).

    Tests sharing it keep to their own key prefix or bucket.
    """
    with running_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Test credentials in the environment, the machine's own hidden; returns the secret."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return TEST_SECRET_KEY


def aws_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a child process with the test credentials (no real ones)."""
    env = dict(base if base is not None else os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env
