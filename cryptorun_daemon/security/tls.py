"""TLS contexts for the admin server (with mutual TLS) and for calls to peers.

Both use the standard library's defaults (``ssl.create_default_context``:
certificate and host-name verification, no compression, modern ciphers) and
refuse anything older than TLS 1.2.

The server context is reloadable in place: :meth:`ServerTLS.reload` loads the
new certificate chain into the *same* ``SSLContext`` the listener holds, so new
handshakes present the new certificate while open connections (hot streams)
carry on, and the listening socket is never closed. New files are first
loaded into a scratch context, so a broken certificate on disk leaves the
running one in place.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.errors import ConfigError, ConfigProblem


@dataclass(frozen=True)
class ServerTLSFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate it signed


def _base_server_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _load_server_files(ctx: ssl.SSLContext, files: ServerTLSFiles, source: str) -> None:
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [ConfigProblem(source, "admin.tls_cert", f"cannot load {files.cert}: {exc}")]
        ) from exc
    if files.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=files.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        source, "admin.tls_client_ca", f"cannot load {files.client_ca}: {exc}"
                    )
                ]
            ) from exc
        ctx.verify_mode = ssl.CERT_REQUIRED


class ServerTLS:
    """The admin listener's TLS context, re-readable on SIGHUP.

    Invariant: :attr:`context` is the one object handed to the listener at
    start-up and is never replaced, only reloaded in place; a client CA once
    trusted stays trusted until restart (OpenSSL can add to a trust store
    but not remove from it), which :meth:`reload` reports.
    """

    def __init__(self, files: ServerTLSFiles, *, source: str) -> None:
        self._source = source
        self.files = files
        self.context = _base_server_context()
        _load_server_files(self.context, files, source)

    def reload(self, files: ServerTLSFiles) -> list[str]:
        """Load ``files`` into the live context; returns what needs a restart.

        Error handling: raises :class:`ConfigError` without touching the live
        context when the new files do not load.
        """
        _load_server_files(_base_server_context(), files, self._source)  # validate first
        needs_restart: list[str] = []
        if files.client_ca != self.files.client_ca and self.files.client_ca is not None:
            needs_restart.append("admin.tls_client_ca (a CA once trusted stays trusted)")
        if files.client_ca is None and self.files.client_ca is not None:
            needs_restart.append("admin.tls_client_ca removed")
        _load_server_files(self.context, files, self._source)
        self.files = files
        return needs_restart


def client_context(
    ca_file: Path | None, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """The context for every outgoing peer call (HTTPS, WSS).

    ``ca_file`` None trusts the system store; ``cert``/``key`` present this
    region's certificate to peers that require mutual TLS.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def peer_identity(peercert: object) -> str | None:
    """The region named by a verified client certificate (its subject CN), or None."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and isinstance(value, str):
                return value
    return None
