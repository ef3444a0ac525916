"""Config keys of transport security: TLS, plaintext opt-in, open reads, scoped tokens, peer TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptorun_daemon.admin.auth import required_scopes
from cryptorun_daemon.config import load_config
from cryptorun_daemon.errors import ConfigError
from cryptorun_daemon.security.certs import init_certs
from cryptorun_daemon.security.credentials import load_credentials


def _config(tmp_path: Path, admin: str = "", peers: str = "") -> Path:
    (tmp_path / "admin.token").write_text("legacy\n")
    path = tmp_path / "region.toml"
    path.write_text(
        f"""
region = "eu-central"

[admin]
{admin or 'listen = "127.0.0.1:9100"'}
token_file = "admin.token"

[storage]
root = "data"

[peers]
{peers or 'us-east = "http://127.0.0.1:9200"'}
"""
    )
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [f"{p.key}: {p.message}" for p in info.value.problems]


def test_a_legacy_loopback_config_loads_unchanged(tmp_path: Path) -> None:
    """No TLS keys: plaintext on loopback, reads open, the one token file for every scope."""
    config = load_config(_config(tmp_path))
    assert (config.admin.tls, config.admin.scheme, config.admin.open_reads) == (False, "http", True)
    assert config.peer_tls.ca_file is None
    (tmp_path / "admin.token").chmod(0o600)
    credentials = load_credentials(config)
    assert set(credentials.scopes_for_token("legacy") or ()) == {"operator", "peer", "read"}
    assert credentials.peer_token == "legacy"


def test_a_non_loopback_listener_needs_tls_or_an_explicit_plaintext_opt_in(tmp_path: Path) -> None:
    """0.0.0.0 without TLS is refused with a message naming both ways out; allow_plaintext
    accepts it, and reads are then closed (open_reads defaults to loopback only)."""
    found = _problems(_config(tmp_path, 'listen = "0.0.0.0:9100"'))
    assert any(
        p.startswith("admin.listen: 0.0.0.0:9100 is not a loopback address")
        and "admin.tls_cert" in p
        and "allow_plaintext = true" in p
        for p in found
    ), found
    config = load_config(_config(tmp_path, 'listen = "0.0.0.0:9100"\nallow_plaintext = true'))
    assert config.admin.allow_plaintext is True
    assert config.admin.open_reads is False


def test_open_reads_is_refused_off_loopback(tmp_path: Path) -> None:
    """open_reads = true on a non-loopback listener is a config error naming the read token."""
    found = _problems(
        _config(tmp_path, 'listen = "0.0.0.0:9100"\nallow_plaintext = true\nopen_reads = true')
    )
    assert any(p.startswith("admin.open_reads:") and "read_file" in p for p in found), found


def test_tls_keys_scoped_tokens_and_peer_tls_load(tmp_path: Path) -> None:
    """tls_cert/tls_key/tls_client_ca, [admin.tokens] and [peers] ca_file/cert/key load as
    paths; the reserved [peers] keys are not taken for peer regions."""
    issued = init_certs(tmp_path / "pki", ["eu-central"])
    cert, key = issued.regions["eu-central"]
    for name in ("operator", "peer", "read"):
        (tmp_path / f"{name}.token").write_text(f"{name}-token\n")
        (tmp_path / f"{name}.token").chmod(0o600)
    admin = (
        'listen = "0.0.0.0:9100"\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\ntls_client_ca = "{issued.ca_cert}"\n'
        'tokens = { operator_file = "operator.token", peer_file = "peer.token", '
        'read_file = "read.token" }'
    )
    peers = (
        'us-east = "https://us-east.example:9100"\n'
        f'ca_file = "{issued.ca_cert}"\ncert = "{cert}"\nkey = "{key}"'
    )
    config = load_config(_config(tmp_path, admin, peers))
    assert config.admin.scheme == "https"
    assert config.admin.tls_client_ca == issued.ca_cert
    assert dict(config.peers) == {"us-east": "https://us-east.example:9100"}
    assert (config.peer_tls.ca_file, config.peer_tls.cert, config.peer_tls.key) == (
        issued.ca_cert,
        cert,
        key,
    )
    (tmp_path / "admin.token").chmod(0o600)
    credentials = load_credentials(config)
    assert set(credentials.scopes_for_token("operator-token") or ()) == {"operator", "read"}
    assert set(credentials.scopes_for_token("peer-token") or ()) == {"peer"}
    assert set(credentials.scopes_for_token("read-token") or ()) == {"read"}
    assert credentials.scopes_for_token("nope") is None
    assert credentials.peer_token == "peer-token"  # the scoped one wins over the legacy one
    assert credentials.scopes_for_peer("us-east") == {"peer"}
    assert credentials.scopes_for_peer("mallory") == frozenset()


def test_half_configured_tls_and_plaintext_peers_across_a_network_are_refused(
    tmp_path: Path,
) -> None:
    """tls_cert without tls_key, a peer cert without its key, and an http:// peer that is
    not on loopback are each reported."""
    issued = init_certs(tmp_path / "pki", ["eu-central"])
    cert, _key = issued.regions["eu-central"]
    found = _problems(
        _config(
            tmp_path,
            f'listen = "127.0.0.1:9100"\ntls_cert = "{cert}"',
            f'us-east = "http://10.0.0.2:9100"\ncert = "{cert}"',
        )
    )
    assert any(p.startswith("admin.tls_key: tls_cert and tls_key go together") for p in found)
    assert any(p.startswith("peers.key: cert and key go together") for p in found)
    assert any(p.startswith("peers.us-east: http://10.0.0.2:9100 is plaintext") for p in found)


def test_every_route_has_a_scope_and_unknown_routes_need_the_operator() -> None:
    """The route table: health open, streaming peer-only, failover operator-only, HEAD as GET,
    and a route nobody listed needs operator (protected by default)."""
    assert required_scopes("GET", "/healthz") == frozenset()
    assert required_scopes("GET", "/v1/hot/stream") == {"peer"}
    assert required_scopes("POST", "/v1/failover") == {"operator"}
    assert required_scopes("HEAD", "/v1/partitions/{tier}/{path}") == {"read", "peer"}
    assert required_scopes("POST", "/v1/something/new") == {"operator"}
