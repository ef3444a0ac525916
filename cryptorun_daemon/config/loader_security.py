"""The loader's reading of transport-security keys: admin TLS and tokens, peer TLS, etcd TLS.

Kept beside :mod:`cryptorun_daemon.config.loader` (which calls it) so the
rules about exposure live in one place: a listener or a peer URL that is not
on loopback must use TLS unless ``admin.allow_plaintext = true`` says the
operator chose plaintext deliberately, and reads stay open without a
credential only on a loopback listener.

Whether secret files are private (mode 0600) is checked when the daemon
starts (:mod:`cryptorun_daemon.security.credentials`), not here: the CLI loads
the same config to find the daemon and must not need to read its keys.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from cryptorun_daemon.config.model import PeerTLSConfig, TokenFiles

if TYPE_CHECKING:
    from cryptorun_daemon.config.table import Problems as _Loader
    from cryptorun_daemon.config.table import Table as _Table

#: Keys of ``[peers]`` that configure TLS instead of naming a peer region.
PEER_TLS_KEYS: Final = ("ca_file", "cert", "key")


@dataclass(frozen=True)
class AdminSecurity:
    """What ``[admin]`` says about TLS and credentials (before the listener is known)."""

    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    allow_plaintext: bool
    open_reads: bool | None  # None: not set, default by listener
    tokens: TokenFiles


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _path(t: _Table, loader: _Loader, name: str) -> Path | None:
    text = t.string(name, None)
    return loader.resolve(text) if isinstance(text, str) else None


def _existing(t: _Table, loader: _Loader, name: str, path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        loader.problem(t.key(name), f"{path} does not exist")
    return path


def read_admin_security(t: _Table, loader: _Loader) -> AdminSecurity:
    """Read ``tls_cert``, ``tls_key``, ``tls_client_ca``, ``allow_plaintext``,
    ``open_reads`` and ``[admin.tokens]`` from the ``[admin]`` table."""
    cert = _existing(t, loader, "tls_cert", _path(t, loader, "tls_cert"))
    key = _existing(t, loader, "tls_key", _path(t, loader, "tls_key"))
    client_ca = _existing(t, loader, "tls_client_ca", _path(t, loader, "tls_client_ca"))
    allow_plaintext = t.boolean("allow_plaintext", False)
    # Absent means "the default for this listener" (decided by check_admin_exposure).
    open_reads = t.boolean("open_reads", False) if t.has("open_reads") else None
    if (cert is None) != (key is None):
        loader.problem(
            t.key("tls_key" if key is None else "tls_cert"), "tls_cert and tls_key go together"
        )
    if client_ca is not None and cert is None:
        loader.problem(t.key("tls_client_ca"), "mutual TLS needs tls_cert and tls_key too")
    tt = t.table("tokens")
    files = {
        name: _existing(tt, loader, name, _path(tt, loader, name))
        for name in ("operator_file", "peer_file", "read_file")
    }
    tt.finish()
    return AdminSecurity(
        tls_cert=cert,
        tls_key=key if cert is not None else None,
        tls_client_ca=client_ca if cert is not None else None,
        allow_plaintext=bool(allow_plaintext),
        open_reads=open_reads,
        tokens=TokenFiles(**files),
    )


def check_admin_exposure(
    t: _Table, loader: _Loader, host: str, listen: str, security: AdminSecurity
) -> bool:
    """Refuse a plaintext non-loopback listener and open reads off loopback.

    Returns the effective ``open_reads`` (default: true on loopback only).
    """
    loopback = is_loopback(host)
    if not loopback and security.tls_cert is None and not security.allow_plaintext:
        loader.problem(
            t.key("listen"),
            f"{listen} is not a loopback address, so the admin API needs TLS: set "
            "admin.tls_cert and admin.tls_key (see `cryptorun certs init`), or set "
            "admin.allow_plaintext = true to serve plaintext deliberately",
        )
    if security.open_reads and not loopback:
        loader.problem(
            t.key("open_reads"),
            f"/metrics and /v1/status may be open only on a loopback listener, not {listen}; "
            "give Prometheus and readers the read token (admin.tokens.read_file)",
        )
    return loopback if security.open_reads is None else security.open_reads and loopback


def read_peer_tls(t: _Table, loader: _Loader) -> PeerTLSConfig:
    """The ``ca_file``, ``cert`` and ``key`` keys of ``[peers]``."""
    ca = _existing(t, loader, "ca_file", _path(t, loader, "ca_file"))
    cert = _existing(t, loader, "cert", _path(t, loader, "cert"))
    key = _existing(t, loader, "key", _path(t, loader, "key"))
    if (cert is None) != (key is None):
        loader.problem(t.key("key" if key is None else "cert"), "cert and key go together")
        cert = key = None
    return PeerTLSConfig(ca_file=ca, cert=cert, key=key)


def check_peer_url(key: str, url: str, loader: _Loader, *, allow_plaintext: bool) -> None:
    """A peer reached over plaintext must be on loopback or deliberately allowed."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_plaintext and not is_loopback(parts.hostname or ""):
        loader.problem(
            key,
            f"{url} is plaintext to a non-loopback peer: use https:// (with [peers] ca_file) "
            "or set admin.allow_plaintext = true deliberately",
        )


@dataclass(frozen=True)
class EtcdSecurity:
    ca_file: Path | None
    cert: Path | None
    key: Path | None
    user: str | None
    password_file: Path | None


def read_etcd_security(t: _Table, loader: _Loader) -> EtcdSecurity:
    """``etcd_ca_file``, ``etcd_cert``, ``etcd_key``, ``etcd_user``, ``etcd_password_file``."""
    found = {
        name: _existing(t, loader, f"etcd_{name}", _path(t, loader, f"etcd_{name}"))
        for name in ("ca_file", "cert", "key", "password_file")
    }
    user = t.string("etcd_user", None)
    if (found["cert"] is None) != (found["key"] is None):
        loader.problem(t.key("etcd_key"), "etcd_cert and etcd_key go together")
    if (user is None) != (found["password_file"] is None):
        loader.problem(t.key("etcd_password_file"), "etcd_user and etcd_password_file go together")
    return EtcdSecurity(user=user if isinstance(user, str) else None, **found)
