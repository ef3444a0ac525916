"""TLS building blocks: the private CA, mutual TLS on real loopback sockets, reload, secrets.

Every handshake here is a real TLS handshake between an asyncio server and
client on 127.0.0.1; nothing about ``ssl`` is faked.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cryptorun_daemon.errors import ConfigError, UsageError
from cryptorun_daemon.security.certs import init_certs, issue_region_certificate
from cryptorun_daemon.security.secret_files import read_secret
from cryptorun_daemon.security.tls import ServerTLS, ServerTLSFiles, client_context, peer_identity


async def _serve(ctx: ssl.SSLContext) -> tuple[asyncio.Server, int, list[str | None]]:
    """An echo-once server that records the verified client identity of each connection."""
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(peer_identity(writer.get_extra_info("peercert")))
        data = await reader.readline()
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    return server, port, seen


async def _roundtrip(port: int, ctx: ssl.SSLContext) -> tuple[bytes, x509.Certificate]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(b"ping\n")
    await writer.drain()
    data = await reader.readline()
    writer.close()
    return data, x509.load_der_x509_certificate(der)


async def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    """True when the server refused the client: a TLS error, a reset, or no echo."""
    try:
        data, _ = await _roundtrip(port, ctx)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    return data == b""


def test_init_certs_writes_private_keys_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """Keys are 0600, chains verify against the CA, and a second run without --force refuses."""
    issued = init_certs(tmp_path, ["eu-central", "us-east"])
    assert (issued.ca_key.stat().st_mode & 0o777) == 0o600
    for cert_path, key_path in issued.regions.values():
        assert (key_path.stat().st_mode & 0o777) == 0o600
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
        assert len(chain) == 2  # leaf, then the CA
        chain[0].verify_directly_issued_by(chain[1])
    with pytest.raises(UsageError, match="refusing to overwrite"):
        init_certs(tmp_path, ["eu-central"])
    init_certs(tmp_path, ["eu-central"], force=True)


async def test_mutual_tls_identifies_the_peer_region(tmp_path: Path) -> None:
    """A client presenting its region certificate is accepted and identified by region."""
    issued = init_certs(tmp_path, ["eu-central", "us-east"])
    cert, key = issued.regions["eu-central"]
    server_tls = ServerTLS(ServerTLSFiles(cert, key, client_ca=issued.ca_cert), source="t")
    server, port, seen = await _serve(server_tls.context)
    async with server:
        peer_cert, peer_key = issued.regions["us-east"]
        data, _ = await _roundtrip(
            port, client_context(issued.ca_cert, cert=peer_cert, key=peer_key)
        )
        assert data == b"ping\n"
        assert seen == ["us-east"]


async def test_mutual_tls_refuses_no_client_cert_wrong_ca_and_expired(tmp_path: Path) -> None:
    """No client certificate, a server from another CA, and an expired certificate all fail."""
    issued = init_certs(tmp_path / "a", ["eu-central", "us-east"])
    other = init_certs(tmp_path / "b", ["us-east"])
    cert, key = issued.regions["eu-central"]
    server_tls = ServerTLS(ServerTLSFiles(cert, key, client_ca=issued.ca_cert), source="t")
    server, port, seen = await _serve(server_tls.context)
    async with server:
        # 1. No client certificate: the server aborts the handshake.
        # (TLS 1.3 reports the refusal on the first read, as an error or an empty line.)
        assert await _refused(port, client_context(issued.ca_cert))
        # 2. The client trusts another CA: our server certificate does not verify.
        wrong_cert, wrong_key = other.regions["us-east"]
        with pytest.raises(ssl.SSLCertVerificationError):
            await _roundtrip(port, client_context(other.ca_cert, cert=wrong_cert, key=wrong_key))
        # 3. An expired client certificate signed by the right CA is refused.
        ca_cert = x509.load_pem_x509_certificate(issued.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(issued.ca_key.read_bytes(), None)
        old, old_key = issue_region_certificate(
            "us-east",
            ca_cert,
            ca_key,  # type: ignore[arg-type]
            now=datetime.now(UTC) - timedelta(days=30),
            days=1,
        )
        old_cert_path, old_key_path = tmp_path / "old.pem", tmp_path / "old.key"
        old_cert_path.write_bytes(old.public_bytes(serialization.Encoding.PEM))
        old_key_path.write_bytes(
            old_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        assert await _refused(
            port, client_context(issued.ca_cert, cert=old_cert_path, key=old_key_path)
        )
        assert seen == []  # no handler ever ran for a refused client


async def test_reload_swaps_the_certificate_without_closing_the_listener(tmp_path: Path) -> None:
    """After reload, new handshakes see the new certificate; an open connection stays up."""
    first = init_certs(tmp_path / "one", ["eu-central"])
    cert, key = first.regions["eu-central"]
    server_tls = ServerTLS(ServerTLSFiles(cert, key), source="t")
    held_open = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line == b"hold\n":
            await held_open.wait()
        writer.write(line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_tls.context)
    port = server.sockets[0].getsockname()[1]
    async with server:
        # Trust both CAs so the client accepts either certificate.
        second = init_certs(tmp_path / "two", ["eu-central"])
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(first.ca_cert.read_bytes() + second.ca_cert.read_bytes())
        client = client_context(bundle)
        _, before = await _roundtrip(port, client)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
        )
        writer.write(b"hold\n")
        await writer.drain()
        new_cert, new_key = second.regions["eu-central"]
        assert server_tls.reload(ServerTLSFiles(new_cert, new_key)) == []
        _, after = await _roundtrip(port, client)
        assert before.serial_number != after.serial_number
        expected = x509.load_pem_x509_certificates(new_cert.read_bytes())[0]
        assert after.serial_number == expected.serial_number
        held_open.set()
        assert await reader.readline() == b"hold\n"  # the old connection was never dropped
        writer.close()


def test_reload_with_a_broken_certificate_keeps_the_running_one(tmp_path: Path) -> None:
    """A certificate file that does not load is refused and the live context is unchanged."""
    issued = init_certs(tmp_path, ["eu-central"])
    cert, key = issued.regions["eu-central"]
    server_tls = ServerTLS(ServerTLSFiles(cert, key), source="cfg.toml")
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"cfg\.toml: admin\.tls_cert"):
        server_tls.reload(ServerTLSFiles(broken, key))
    assert server_tls.files.cert == cert


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    """A token readable by group or others is refused with its mode; a 0600 one is read."""
    token = tmp_path / "admin.token"
    token.write_text("s3cret-value\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        read_secret(token, source="eu.toml", key="admin.token_file")
    message = str(info.value)
    assert "eu.toml: admin.token_file" in message
    assert "0644" in message
    assert "s3cret-value" not in message  # the secret never appears in an error
    token.chmod(0o600)
    assert read_secret(token, source="eu.toml", key="admin.token_file") == "s3cret-value"
    token.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(token, source="eu.toml", key="admin.token_file")


def test_certs_init_command_writes_files_and_exits_2_on_reuse(tmp_path: Path) -> None:
    """`cryptorun certs init` prints the config lines, and refuses to overwrite (exit 2)."""
    import io

    from cryptorun_daemon.cli.main import main

    out = io.StringIO()
    argv = ["certs", "init", "--dir", str(tmp_path), "--regions", "eu-central,us-east"]
    assert main(argv, out=out) == 0
    assert f'tls_cert = "{tmp_path / "us-east.pem"}"' in out.getvalue()
    assert (tmp_path / "us-east.key").stat().st_mode & 0o777 == 0o600
    assert main(argv, out=io.StringIO()) == 2
    assert main(["certs", "init", "--dir", str(tmp_path / "x"), "--regions", "Bad_Name"]) == 2
