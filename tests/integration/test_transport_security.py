"""Transport security end to end: real TLS handshakes on 127.0.0.1, real daemons.

Certificates come from ``cryptorun certs init`` (a private CA, one certificate
per region); every client here is a real TLS client (aiohttp or raw asyncio
streams), nothing about ``ssl`` or our network code is faked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cryptorun_daemon.daemon import Daemon
from cryptorun_daemon.failover.component import FailoverComponent
from cryptorun_daemon.failover.peers import authenticated_channel
from cryptorun_daemon.security.certs import IssuedFiles, init_certs, issue_region_certificate
from cryptorun_daemon.security.tls import client_context
from cryptorun_daemon.storage.catalog import Catalog
from tests.harness.daemons import (
    RegionSpec,
    run_daemon,
    start_daemon_process,
    stop_process,
    two_regions,
)
from tests.harness.testdata import seed_partitions
from tests.integration.test_hot_mirror import HOT, applied, hot, hot_factories, synthetic

pytestmark = pytest.mark.slow

A, B = "eu-central", "us-east"
OPERATOR, PEER, READ = "operator-token-0123456789", "peer-token-0123456789", "read-token-0123456789"
DAY = datetime(2025, 9, 1, tzinfo=UTC)


# --- helpers ---------------------------------------------------------------------------


def _secret(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


@dataclass
class Pki:
    issued: IssuedFiles

    @property
    def ca(self) -> Path:
        return self.issued.ca_cert

    def pair(self, region: str) -> tuple[Path, Path]:
        return self.issued.regions[region]

    def client(self, region: str | None = None) -> ssl.SSLContext:
        """A client context trusting the CA, presenting ``region``'s certificate if given."""
        if region is None:
            return client_context(self.ca)
        cert, key = self.pair(region)
        return client_context(self.ca, cert=cert, key=key)

    def reissue(self, region: str, *, expired: bool = False) -> tuple[Path, Path]:
        """Write a new certificate for ``region`` over its files; returns them."""
        ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(self.issued.ca_key.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        now = datetime.now(UTC) - timedelta(days=10) if expired else None
        cert, key = issue_region_certificate(
            region, ca_cert, ca_key, now=now, days=1 if expired else 30
        )
        cert_path, key_path = self.pair(region)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.ca.read_bytes())
        return cert_path, key_path


def _pki(directory: Path) -> Pki:
    return Pki(init_certs(directory, [A, B]))


def _secure(
    spec: RegionSpec,
    pki: Pki,
    *,
    mutual: bool = True,
    tokens: bool = True,
    peer_ca: Path | None = None,
) -> None:
    """Make ``spec`` serve TLS (mutual by default) with scoped tokens and call peers over https."""
    cert, key = pki.pair(spec.region)
    spec.scheme = "https"
    spec.token = None
    admin: dict[str, Any] = {"tls_cert": str(cert), "tls_key": str(key), "open_reads": False}
    if mutual:
        admin["tls_client_ca"] = str(pki.ca)
    if tokens:
        spec.directory.mkdir(parents=True, exist_ok=True)
        admin["tokens"] = {
            "operator_file": _secret(spec.directory / "operator.token", OPERATOR),
            "peer_file": _secret(spec.directory / "peer.token", PEER),
            "read_file": _secret(spec.directory / "read.token", READ),
        }
    spec.sections["admin"] = admin
    spec.peer_tls = {"ca_file": str(peer_ca or pki.ca), "cert": str(cert), "key": str(key)}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _counter(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


async def _request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
) -> tuple[int, Any]:
    headers = _bearer(token) if token else {}
    async with http.request(method, url, json=body, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def _server_certificate(port: int, ctx: ssl.SSLContext) -> x509.Certificate:
    """The leaf certificate a fresh handshake with 127.0.0.1:``port`` presents."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


# --- scopes ------------------------------------------------------------------------------


async def test_each_scope_is_refused_where_it_does_not_belong(tmp_path: Path) -> None:
    """Over TLS: no or a wrong token is 401, a token without the route's scope is 403, each
    with the JSON error body (never echoing the token); /healthz and /readyz stay open;
    under mutual TLS a peer region's client certificate grants the peer scope only."""
    pki = _pki(tmp_path / "pki")
    a, b = two_regions(tmp_path)
    _secure(a, pki)
    _secure(b, pki)
    async with run_daemon(a.write()):
        base = a.base_url
        # As a person would call it: the region's own certificate (not a peer: no scope).
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pki.client(A))) as http:
            for path in ("/healthz", "/readyz"):
                assert (await _request(http, "GET", base + path))[0] == 200
            failover = {"tier": "warm", "promote": B, "demote": A, "dry_run": True}
            cases: list[tuple[str, str, str | None, Any, int]] = [
                ("GET", "/v1/status", None, None, 401),
                ("GET", "/metrics", None, None, 401),
                ("GET", "/v1/status", "not-a-token", None, 401),
                ("GET", "/v1/status", READ, None, 200),
                ("GET", "/metrics", READ, None, 200),
                ("GET", "/v1/partitions?tier=warm", READ, None, 200),
                ("POST", "/v1/failover", READ, failover, 403),
                ("POST", "/v1/partitions/seal", READ, {}, 403),
                ("GET", "/v1/hot/stream", READ, None, 403),
                ("POST", "/v1/failover", PEER, failover, 403),
                ("POST", "/v1/replication/simulate", PEER, {}, 403),
                ("POST", "/v1/partitions/seal", PEER, {}, 403),
                ("GET", "/metrics", PEER, None, 403),
                ("GET", "/v1/hot/stream", OPERATOR, None, 403),
                ("POST", "/v1/failover/notify", OPERATOR, {}, 403),
                ("POST", "/v1/failover", OPERATOR, failover, 200),
                ("GET", "/v1/status", OPERATOR, None, 200),
            ]
            for method, path, token, body, expected in cases:
                status, doc = await _request(http, method, base + path, token=token, body=body)
                assert status == expected, (method, path, token, status, doc)
                if expected in (401, 403):
                    assert doc["error"] == ("unauthorized" if expected == 401 else "forbidden")
                    assert isinstance(doc["detail"], str)
                    assert token is None or token not in json.dumps(doc)
        # A peer region's certificate alone: peer routes yes, operator and read routes no.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=pki.client(B))
        ) as peer_http:
            assert (await _request(peer_http, "GET", base + "/v1/partitions?tier=warm"))[0] == 200
            assert (await _request(peer_http, "GET", base + "/v1/status"))[0] == 200
            status, doc = await _request(peer_http, "POST", base + "/v1/failover", body=failover)
            assert (status, doc["error"]) == (403, "forbidden")
            assert (await _request(peer_http, "GET", base + "/metrics"))[0] == 403


# --- refusals at the handshake --------------------------------------------------------------


async def test_plaintext_wrong_ca_and_expired_clients_are_refused_and_counted(
    tmp_path: Path,
) -> None:
    """A plaintext HTTP client, a client certificate from another CA and an expired client
    certificate each fail the handshake, and each is counted by reason in
    cryptorun_admin_tls_refused_total."""
    pki = _pki(tmp_path / "pki")
    other = _pki(tmp_path / "other-pki")
    a, _b = two_regions(tmp_path)
    _secure(a, pki)
    async with run_daemon(a.write()) as da:
        # Plaintext: an HTTP request to the TLS port.
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                await _request(http, "GET", f"http://127.0.0.1:{a.port}/healthz")
        # A certificate signed by a CA the daemon does not trust.
        foreign = client_context(pki.ca, cert=other.pair(B)[0], key=other.pair(B)[1])
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=foreign)) as http:
            with pytest.raises(aiohttp.ClientError):
                await _request(http, "GET", a.base_url + "/healthz")
        # An expired certificate from the right CA.
        expired_cert, expired_key = pki.reissue(B, expired=True)
        expired = client_context(pki.ca, cert=expired_cert, key=expired_key)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=expired)) as http:
            with pytest.raises(aiohttp.ClientError):
                await _request(http, "GET", a.base_url + "/healthz")

        async def counted() -> bool:
            name = "cryptorun_admin_tls_refused_total"
            return (
                _counter(da, name, reason="plaintext") >= 1
                and _counter(da, name, reason="client_certificate") >= 2
            )

        await _eventually(counted, "the three refusals to be counted")


async def test_garbage_and_a_stalled_handshake_do_not_block_other_clients(tmp_path: Path) -> None:
    """Random bytes instead of a ClientHello, and a client that sends half a ClientHello and
    then nothing, each hold only their own connection: a proper client is served meanwhile."""
    pki = _pki(tmp_path / "pki")
    a, _b = two_regions(tmp_path)
    _secure(a, pki)
    async with run_daemon(a.write()) as da:
        _, garbage = await asyncio.open_connection("127.0.0.1", a.port)
        garbage.write(os.urandom(4096))
        await garbage.drain()
        _, stalled = await asyncio.open_connection("127.0.0.1", a.port)
        # A TLS record header announcing a 512-byte handshake message, then 5 of its bytes.
        stalled.write(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03]))
        await stalled.drain()
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=pki.client(A))
            ) as http:
                for _ in range(3):
                    status, _doc = await _request(
                        http, "GET", a.base_url + "/v1/status", token=READ
                    )
                    assert status == 200
            await _eventually(
                lambda: _async_true(
                    _counter(da, "cryptorun_admin_tls_refused_total", reason="plaintext")
                    + _counter(da, "cryptorun_admin_tls_refused_total", reason="handshake")
                    >= 1
                ),
                "the garbage connection to be refused",
            )
        finally:
            garbage.close()
            stalled.close()


async def _async_true(value: bool) -> bool:
    return value


# --- peers over https / wss ---------------------------------------------------------------------


async def test_two_regions_over_mutual_tls_mirror_copy_and_fail_over(tmp_path: Path) -> None:
    """Both regions serve mutual TLS and identify each other by certificate (no peer token):
    B mirrors A's hot stream over wss, pulls A's warm partitions over https, and a failover
    on B reaches A over the authenticated peer channel (A adopts the new epoch)."""
    pki = _pki(tmp_path / "pki")
    a, b = two_regions(tmp_path)
    for spec in (a, b):
        _secure(spec, pki)
        del spec.sections["admin"]["tokens"]["peer_file"]  # certificates identify the peers
        spec.sections["hot"] = dict(HOT)
    a.feeds = [synthetic(200)]
    seed_partitions(a.storage_root, tier="warm", start=DAY, count=3, rows=50, region=A)
    async with (
        run_daemon(a.write(), extra_components=hot_factories()) as da,
        run_daemon(b.write(), extra_components=hot_factories()) as db,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pki.client(B))) as http,
    ):
        assert db.ctx.credentials.peer_token is None
        await _eventually(lambda: _async_true(applied(db, A) >= 100), "B to mirror 100 records")
        assert hot(db).clients[A].url.startswith("https://")

        status, doc = await _request(
            http,
            "POST",
            b.base_url + "/v1/replication/sync",
            token=OPERATOR,
            body={"tier": "warm", "from": A, "kind": "pull"},
        )
        assert status == 200, doc
        [report] = doc["passes"]
        assert report["ok"] is True, report  # the scheduled first pass may have copied them
        assert len(list(Catalog(b.storage_root).sealed_manifests("warm"))) == 3

        status, doc = await _request(
            http,
            "POST",
            b.base_url + "/v1/failover",
            token=OPERATOR,
            body={"tier": "warm", "promote": B, "demote": A},
        )
        assert status == 200, doc
        assert doc["warnings"] == [], doc["warnings"]

        async def a_adopted() -> bool:
            _, state = await _request(http, "GET", a.base_url + "/v1/status?tier=warm", token=READ)
            return bool(state["tiers"]["warm"]["primary"] == B)

        await _eventually(a_adopted, "A to adopt B as warm primary")
        assert _counter(db, "cryptorun_peer_errors_total", peer=A, reason="tls") == 0
        assert applied(db, A) > 100
        assert da.ctx.credentials.mutual_tls


async def test_a_peer_with_an_untrusted_or_expired_certificate_is_counted_never_downgraded(
    tmp_path: Path,
) -> None:
    """B trusts another CA than the one that signed A: every call to A fails verification, is
    counted as cryptorun_peer_errors_total{peer,reason="tls"} and shown in B's status, and
    nothing reaches A in plaintext; then A's certificate expires (same CA) and the same holds."""
    pki = _pki(tmp_path / "pki")
    other = _pki(tmp_path / "other-pki")
    a, b = two_regions(tmp_path)
    _secure(a, pki)
    _secure(b, pki, peer_ca=other.ca)
    for spec in (a, b):
        spec.sections["replication"] = {"peer_down_after": "1s"}
    async with run_daemon(a.write()) as da, run_daemon(b.write()) as db:

        async def tls_errors(n: float) -> bool:
            return _counter(db, "cryptorun_peer_errors_total", peer=A, reason="tls") >= n

        await _eventually(lambda: tls_errors(2), "B to count TLS failures towards A")
        health = db.status(tier=None, region=None)["peers_health"][A]
        assert health["errors"]["tls"] >= 2
        assert health["reachable"] is False
        assert "certificate" in (health["last_error"] or "").lower()
        assert _counter(da, "cryptorun_admin_tls_refused_total", reason="plaintext") == 0

    # Same CA, but A's certificate has expired.
    pki.reissue(A, expired=True)
    _secure(b, pki)
    async with run_daemon(a.write()), run_daemon(b.write()) as db:
        await _eventually(
            lambda: _async_true(
                _counter(db, "cryptorun_peer_errors_total", peer=A, reason="tls") >= 2
            ),
            "B to count the expired certificate",
        )
        assert "expired" in (
            db.status(tier=None, region=None)["peers_health"][A]["last_error"] or ""
        )


# --- certificate reload -------------------------------------------------------------------------


@asynccontextmanager
async def _tls_process(spec: RegionSpec, pki: Pki) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``spec`` as a real daemon process, ready once /readyz answers 200 over TLS."""
    config = spec.write()
    proc = start_daemon_process(config)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=pki.client(spec.region))
        ) as http:

            async def ready() -> bool:
                assert proc.poll() is None, config.with_suffix(".log").read_text()
                try:
                    async with http.get(spec.base_url + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await _eventually(ready, f"{spec.region} to be ready")
        yield proc
    finally:
        stop_process(proc)


async def test_sighup_swaps_the_certificate_while_a_hot_stream_stays_up(tmp_path: Path) -> None:
    """A runs as a real process; B follows its hot stream over wss. New certificate files and
    SIGHUP: new handshakes present the new certificate, the listener never closed and B's
    stream is the same connection, still delivering."""
    pki = _pki(tmp_path / "pki")
    a, b = two_regions(tmp_path)
    for spec in (a, b):
        _secure(spec, pki)
        spec.sections["hot"] = dict(HOT)
    a.feeds = [synthetic(100)]
    async with (
        _tls_process(a, pki) as proc,
        run_daemon(b.write(), extra_components=hot_factories()) as db,
    ):
        await _eventually(lambda: _async_true(applied(db, A) >= 50), "B to mirror 50 records")
        client = hot(db).clients[A]
        assert client.connections == 1
        before = await _server_certificate(a.port, pki.client(B))

        pki.reissue(A)
        proc.send_signal(signal.SIGHUP)

        async def swapped() -> bool:
            after = await _server_certificate(a.port, pki.client(B))
            return after.serial_number != before.serial_number

        await _eventually(swapped, "a new handshake to present the new certificate")
        seen = applied(db, A)
        await _eventually(lambda: _async_true(applied(db, A) > seen + 20), "more records at B")
        assert client.connections == 1
        assert client.connected


# --- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["admin.token_file", "admin.tokens.read_file", "admin.tls_key"])
def test_a_secret_readable_by_others_refuses_to_start(tmp_path: Path, secret: str) -> None:
    """A token file or private key with group/other permissions: the real process (and
    `daemon --check`) exits 2 naming the setting, the file and its mode (like ssh), and
    never prints the secret."""
    pki = _pki(tmp_path / "pki")
    a, _b = two_regions(tmp_path)
    if secret == "admin.token_file":
        a.token = "s3cret-token-value"
        config = a.write()
        loose = a.directory / "admin.token"
    else:
        _secure(a, pki, mutual=False)
        config = a.write()
        loose = a.directory / "read.token" if secret == "admin.tokens.read_file" else pki.pair(A)[1]
    loose.chmod(0o644)
    for check in ((), ("--check",)):  # the same verdict from `daemon --check`
        result = subprocess.run(
            [sys.executable, "-m", "cryptorun_daemon", "daemon", "--config", str(config), *check],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert secret in result.stderr
        assert f"{loose} has mode 0644" in result.stderr
        assert "s3cret-token-value" not in result.stderr + result.stdout
        assert READ not in result.stderr + result.stdout


async def test_cli_reaches_a_mutual_tls_daemon_with_the_operator_token(tmp_path: Path) -> None:
    """``cryptorun replication status/failover --config`` finds the https URL, verifies the
    daemon against [peers] ca_file, presents the region's certificate and the operator
    token; with the read token instead, the failover is refused (403, exit 1)."""
    pki = _pki(tmp_path / "pki")
    a, _b = two_regions(tmp_path)
    _secure(a, pki)
    config = a.write()

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "cryptorun_daemon",
                "replication",
                *args,
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, **(env or {})},
        )

    failover = ("failover", "--tier", "warm", "--promote", B, "--demote", A, "--dry-run", "--json")
    async with run_daemon(config):
        status = await asyncio.to_thread(cli, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["region"] == A
        done = await asyncio.to_thread(cli, *failover)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["dry_run"] is True
        refused = await asyncio.to_thread(cli, *failover, env={"CRYPTORUN_ADMIN_TOKEN": READ})
        assert refused.returncode == 1
        assert "403" in refused.stderr or "forbidden" in refused.stderr


async def test_a_peer_certificate_cannot_notify_in_another_regions_name(tmp_path: Path) -> None:
    """Under mutual TLS a failover notification whose "from" differs from the client
    certificate's region is refused (403 forbidden) and adopts nothing; the same state sent
    in the certificate's own name is adopted."""
    pki = _pki(tmp_path / "pki")
    a, _b = two_regions(tmp_path)
    _secure(a, pki)
    async with (
        run_daemon(a.write()) as da,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pki.client(B))) as http,
    ):
        failover = da.ctx.components["failover"]
        assert isinstance(failover, FailoverComponent)
        current = failover.current("warm")
        assert current is not None
        promoted = current.promoted(B, A, expected_epoch=None, at=datetime.now(UTC)).to_json()
        url = a.base_url + "/v1/failover/notify"
        status, doc = await _request(http, "POST", url, body={"from": A, "state": promoted})
        assert (status, doc["error"]) == (403, "forbidden")
        assert "certificate says 'us-east'" in doc["detail"]
        assert failover.current("warm") == current
        status, doc = await _request(http, "POST", url, body={"from": B, "state": promoted})
        assert status == 200, doc
        assert (doc["applied"], doc["primary"], doc["epoch"]) == (True, B, current.epoch + 1)


async def test_an_epoch_read_over_plaintext_across_a_network_is_never_adopted(
    tmp_path: Path,
) -> None:
    """The prober's status handler (file store) adopts a peer's newer epoch only when the
    answer came over an authenticated channel (https, or loopback); read over plaintext
    across a network it is refused and shown as the tier's state problem."""
    assert authenticated_channel("https://10.0.2.10:9200")
    assert authenticated_channel("http://127.0.0.1:9200")
    assert not authenticated_channel("http://10.0.2.10:9200")
    a, _b = two_regions(tmp_path)
    async with run_daemon(a.write()) as da:
        failover = da.ctx.components["failover"]
        assert isinstance(failover, FailoverComponent)
        current = failover.current("warm")
        assert current is not None
        newer = current.promoted(B, A, expected_epoch=None, at=datetime.now(UTC))
        doc = {"failover": {"ready": True}, "tiers": {"warm": newer.to_json()}}
        learn = failover._status_handler()
        assert learn is not None
        assert await learn(B, doc, False) is False
        assert failover.current("warm") == current
        warm = da.status(tier="warm", region=None)["tiers"]["warm"]
        assert "over plaintext; not adopted" in (warm["state_problem"] or "")
        await learn(B, doc, True)
        adopted = failover.current("warm")
        assert adopted is not None
        assert (adopted.primary, adopted.epoch) == (B, current.epoch + 1)
