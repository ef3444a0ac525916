"""The daemon's TLS state: the admin listener's context and the one context for calls to peers.

Built once at start-up from ``[admin]`` and ``[peers]``; :meth:`TransportSecurity.reload`
(SIGHUP) re-reads the certificate files into the *same* contexts, so the
listener stays bound, open connections (hot streams) carry on, and new
handshakes use the new certificates.

Error handling: a certificate or key that does not load raises
:class:`ConfigError` at start-up (exit 2); on reload it is logged and the
running certificates stay.
"""

from __future__ import annotations

import ssl
from dataclasses import replace

import structlog

from cryptorun_daemon.config import Config
from cryptorun_daemon.errors import ConfigError, ConfigProblem
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.component import ReloadResult
from cryptorun_daemon.security.credentials import load_credentials
from cryptorun_daemon.security.etcd_access import etcd_access
from cryptorun_daemon.security.handshake import count_refusals
from cryptorun_daemon.security.tls import ServerTLS, ServerTLSFiles, client_context

log = structlog.get_logger("cryptorun.security")


def _server_files(config: Config) -> ServerTLSFiles | None:
    admin = config.admin
    if admin.tls_cert is None or admin.tls_key is None:
        return None
    return ServerTLSFiles(admin.tls_cert, admin.tls_key, client_ca=admin.tls_client_ca)


def _peer_context(config: Config) -> ssl.SSLContext:
    peers = config.peer_tls
    try:
        return client_context(peers.ca_file, cert=peers.cert, key=peers.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [ConfigProblem(str(config.source), "peers", f"cannot load peer TLS files: {exc}")]
        ) from exc


class TransportSecurity:
    """The admin server's TLS (``server``, None for plaintext) and the peer client context.

    Invariant: ``server.context`` and ``client`` are the objects handed to the
    listener and to the HTTP session at start-up; they are reloaded in place,
    never replaced.
    """

    def __init__(self, config: Config, metrics: Metrics) -> None:
        files = _server_files(config)
        self.server = ServerTLS(files, source=str(config.source)) if files else None
        if self.server is not None:
            count_refusals(self.server.context, metrics)
        self.client = _peer_context(config)
        self._config = config

    @property
    def server_context(self) -> ssl.SSLContext | None:
        return self.server.context if self.server is not None else None

    def reload(self, new: Config) -> ReloadResult:
        """Re-read certificates and keys (same or new paths) into the live contexts.

        Claims ``admin.tls`` (applied) and ``peer_tls``; turning TLS on or
        off, or changing the client CA, needs a restart.
        """
        applied: list[str] = []
        needs_restart: list[str] = []
        files = _server_files(new)
        if (files is None) != (self.server is None):
            needs_restart.append("admin.tls (turning TLS on or off)")
        elif self.server is not None and files is not None:
            try:
                needs_restart += self.server.reload(files)
                applied.append("admin.tls")
                log.info("admin TLS certificate reloaded", cert=str(files.cert))
            except ConfigError as exc:
                log.error(
                    "admin TLS reload refused; the running certificate stays",
                    problems=[str(p) for p in exc.problems],
                )
        peers = new.peer_tls
        if peers.ca_file != self._config.peer_tls.ca_file:
            needs_restart.append("peer_tls.ca_file")
        elif peers.cert is not None and peers.key is not None:
            try:
                _peer_context(new)  # validate in a scratch context first
                self.client.load_cert_chain(peers.cert, peers.key)
                applied.append("peer_tls")
            except (ConfigError, OSError, ssl.SSLError) as exc:
                log.error("peer TLS reload refused; the running certificate stays", error=str(exc))
        elif peers != self._config.peer_tls:
            needs_restart.append("peer_tls")
        self._config = replace(self._config, admin=new.admin, peer_tls=new.peer_tls)
        return ReloadResult(applied=tuple(applied), needs_restart=tuple(needs_restart))


def check_transport_files(config: Config) -> None:
    """Everything the daemon checks at start-up about secrets and certificates, without
    starting (``cryptorun daemon --check``): token files and keys private, certificates
    and keys loadable, the etcd password readable.

    Error handling: :class:`ConfigError` (exit 2) naming each problem.
    """
    load_credentials(config)
    files = _server_files(config)
    if files is not None:
        ServerTLS(files, source=str(config.source))
    _peer_context(config)
    etcd_access(config)
