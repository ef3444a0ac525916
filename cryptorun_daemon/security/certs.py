"""A private CA and one certificate per region, for people who have no PKI.

``cryptorun certs init --dir DIR --regions eu-central,us-east`` writes::

    DIR/ca.pem            the CA certificate (give it to every region as [peers] ca_file)
    DIR/ca.key            the CA key (0600; only needed to issue more certificates)
    DIR/{region}.pem      the region's certificate, then the CA (a full chain)
    DIR/{region}.key      the region's key (0600)

Each region certificate is valid both as a server (its admin listener) and as
a client (mutual TLS towards its peers): its subject CN and first DNS SAN are
the region name, which is how a peer's identity is read from a verified
client certificate. ``--hosts`` adds the names and addresses the admin
listener is reached by (loopback is always included, so the demo and the tests
work unchanged).

Error handling: an existing file is never overwritten unless ``force`` is set
(:class:`~cryptorun_daemon.errors.UsageError` names it), so a second run cannot
silently invalidate certificates already deployed.
Resource handling: keys are written with mode 0600 through the atomic writer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cryptorun_daemon.errors import UsageError
from cryptorun_daemon.storage.atomic import atomic_write_bytes

# Loopback is always a valid name for a region's listener: demos and tests.
_LOOPBACK_NAMES = ("localhost",)
_LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class IssuedFiles:
    """Paths written by :func:`init_certs`."""

    ca_cert: Path
    ca_key: Path
    regions: dict[str, tuple[Path, Path]]  # region -> (certificate chain, key)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: every TLS stack speaks it, keys are small and fast to make.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca(
    name: str, now: datetime, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_region_certificate(
    region: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    hosts: Sequence[str] = (),
    now: datetime | None = None,
    days: int = 365,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server+client certificate for ``region`` signed by the CA.

    ``now`` and ``days`` exist so tests can make an expired certificate.
    """
    now = now or datetime.now(UTC)
    key = _new_key()
    names: list[x509.GeneralName] = [x509.DNSName(region)]
    for host in (*hosts, *_LOOPBACK_NAMES, *_LOOPBACK_ADDRESSES):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, region)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def init_certs(
    directory: Path,
    regions: Sequence[str],
    *,
    hosts: Sequence[str] = (),
    days: int = 365,
    force: bool = False,
) -> IssuedFiles:
    """Create the CA and one certificate per region under ``directory``."""
    if not regions:
        raise UsageError("certs init: --regions names no region")
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    planned = [ca_cert_path, ca_key_path]
    for region in regions:
        planned += [directory / f"{region}.pem", directory / f"{region}.key"]
    existing = [p for p in planned if p.exists()]
    if existing and not force:
        raise UsageError(
            "certs init: refusing to overwrite "
            + ", ".join(str(p) for p in existing)
            + " (pass --force to replace them; deployed certificates stop verifying)"
        )
    now = datetime.now(UTC)
    ca_cert, ca_key = _make_ca("cryptorun private CA", now, days * 10)
    atomic_write_bytes(ca_key_path, _key_pem(ca_key), mode=0o600)
    atomic_write_bytes(ca_cert_path, _cert_pem(ca_cert), mode=0o644)
    issued: dict[str, tuple[Path, Path]] = {}
    for region in regions:
        cert, key = issue_region_certificate(
            region, ca_cert, ca_key, hosts=hosts, now=now, days=days
        )
        cert_path, key_path = directory / f"{region}.pem", directory / f"{region}.key"
        atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
        atomic_write_bytes(cert_path, _cert_pem(cert) + _cert_pem(ca_cert), mode=0o644)
        issued[region] = (cert_path, key_path)
    return IssuedFiles(ca_cert=ca_cert_path, ca_key=ca_key_path, regions=issued)
