"""The etcd state store against a real etcd with client-certificate auth and with user auth.

etcd runs as a real process (tests/harness/etcd.py); the daemon reaches it
through its JSON gateway with the TLS context and login its ``[state]`` keys
describe. Nothing about TLS or etcd is faked.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptorun_daemon.config import load_config
from cryptorun_daemon.daemon import Daemon
from cryptorun_daemon.errors import ConfigError, StateStoreError
from cryptorun_daemon.failover.etcd_client import EtcdClient
from cryptorun_daemon.security.certs import init_certs
from cryptorun_daemon.security.tls import client_context
from tests.harness.daemons import RegionSpec, run_daemon, two_regions
from tests.harness.etcd import EtcdTLS, enable_auth, require_etcd, running_etcd

pytestmark = [pytest.mark.slow, pytest.mark.needs_etcd]

A = "eu-central"
PASSWORD = "etcd-root-password-0123"


async def _wait_ready(daemon: Daemon, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.not_ready_reasons():
        if time.monotonic() > deadline:
            raise AssertionError(f"daemon not ready: {daemon.not_ready_reasons()}")
        await asyncio.sleep(0.05)


def _region(tmp_path: Path, etcd_url: str, state: dict[str, Any]) -> RegionSpec:
    a, _b = two_regions(tmp_path)
    a.sections["state"] = {
        "backend": "etcd",
        "etcd_endpoints": [etcd_url],
        "etcd_prefix": "/tls-test",
        "lease_ttl": "2s",
        **state,
    }
    return a


async def test_etcd_store_over_tls_with_client_certificate_auth(tmp_path: Path) -> None:
    """etcd started with --client-cert-auth: a client without a certificate is refused,
    and the daemon configured with etcd_ca_file/etcd_cert/etcd_key reads and writes the
    failover state through it (it becomes ready with the bootstrap epoch)."""
    require_etcd()
    issued = init_certs(tmp_path / "pki", ["etcd", A])
    (etcd_cert, etcd_key), (cert, key) = issued.regions["etcd"], issued.regions[A]
    tls = EtcdTLS(issued.ca_cert, etcd_cert, etcd_key, client_cert=cert, client_key=key)
    async with running_etcd(tmp_path / "etcd", tls=tls) as etcd:
        assert etcd.client_url.startswith("https://")
        anonymous = EtcdClient(
            [etcd.client_url], timeout=3.0, ssl_context=client_context(issued.ca_cert)
        )
        try:
            with pytest.raises(StateStoreError):
                await anonymous.range(b"/tls-test/")
        finally:
            await anonymous.close()

        spec = _region(
            tmp_path,
            etcd.client_url,
            {
                "etcd_ca_file": str(issued.ca_cert),
                "etcd_cert": str(cert),
                "etcd_key": str(key),
            },
        )
        async with run_daemon(load_config(spec.write())) as daemon:
            await _wait_ready(daemon)
            warm = daemon.status(tier="warm", region=None)["tiers"]["warm"]
            assert (warm["primary"], warm["epoch"]) == (A, 1)


async def test_etcd_store_logs_in_when_etcd_auth_is_enabled(tmp_path: Path) -> None:
    """etcd with auth enabled (user root, role root): an anonymous client is refused; the
    daemon with etcd_user/etcd_password_file authenticates and works; a password file
    readable by others refuses to start, naming the file."""
    async with running_etcd(tmp_path / "etcd") as etcd:
        await asyncio.to_thread(enable_auth, etcd, PASSWORD)
        anonymous = EtcdClient([etcd.client_url], timeout=3.0)
        try:
            with pytest.raises(StateStoreError, match=r"user name is empty|permission denied"):
                await anonymous.put(b"/tls-test/x", b"1")
        finally:
            await anonymous.close()

        password_file = tmp_path / "etcd.password"
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        spec = _region(
            tmp_path,
            etcd.client_url,
            {"etcd_user": "root", "etcd_password_file": str(password_file)},
        )
        config = load_config(spec.write())
        async with run_daemon(config) as daemon:
            await _wait_ready(daemon)
            warm = daemon.status(tier="warm", region=None)["tiers"]["warm"]
            assert (warm["primary"], warm["epoch"]) == (A, 1)

        password_file.chmod(0o644)
        with pytest.raises(ConfigError, match=r"etcd\.password has mode 0644") as caught:
            Daemon(config)
        assert PASSWORD not in str(caught.value)


async def test_etcd_client_logs_in_again_when_etcd_voids_its_token(tmp_path: Path) -> None:
    """etcd with auth: once etcd no longer accepts the client's token (here: auth turned off
    and on again, which drops every token, as an expired --auth-token-ttl does), the next
    call authenticates again and succeeds; no error reaches the caller."""
    async with running_etcd(tmp_path / "etcd") as etcd:
        await asyncio.to_thread(enable_auth, etcd, PASSWORD)
        client = EtcdClient([etcd.client_url], timeout=3.0, user="root", password=PASSWORD)
        try:
            await client.put(b"/auth/a", b"1")
            first = client._auth_token
            assert first is not None
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{etcd.client_url}/v3/auth/authenticate",
                    json={"name": "root", "password": PASSWORD},
                ) as resp:
                    admin_token = (await resp.json())["token"]
                # Turning auth off and on again drops every token etcd issued.
                for step, headers in (("disable", {"Authorization": admin_token}), ("enable", {})):
                    async with http.post(
                        f"{etcd.client_url}/v3/auth/{step}", json={}, headers=headers
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                async with http.post(
                    f"{etcd.client_url}/v3/kv/put",
                    json={"key": "L2F1dGgvYQ==", "value": "Mg=="},
                    headers={"Authorization": first},
                ) as resp:
                    assert "invalid auth token" in await resp.text()
            await client.put(b"/auth/a", b"3")
            result = await client.range(b"/auth/a")
            assert [kv.value for kv in result.kvs] == [b"3"]
            assert client._auth_token not in (None, first)
        finally:
            await client.close()
