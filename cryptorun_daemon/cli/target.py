"""Which daemon a ``replication`` command talks to, and with which token."""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.config import Config, load_config
from cryptorun_daemon.errors import UsageError
from cryptorun_daemon.security.tls import client_context


@dataclass(frozen=True)
class AdminTarget:
    url: str
    token: str | None
    peers: dict[str, str]
    ssl_context: ssl.SSLContext | None = None


def resolve_target(args: argparse.Namespace) -> AdminTarget:
    """Flags first, then environment, then ``--config``.

    Error handling: raises :class:`UsageError` when no daemon address can be
    found or a named token file cannot be read.
    """
    config = load_config(args.config) if getattr(args, "config", None) else None
    url = args.admin_url or os.environ.get("CRYPTORUN_ADMIN_URL")
    if not url and config is not None:
        host = config.admin.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a wildcard bind is reached on loopback
        url = f"{config.admin.scheme}://{host}:{config.admin.port}"
    if not url:
        raise UsageError(
            "no daemon to talk to: pass --admin-url URL or --config PATH, "
            "or set CRYPTORUN_ADMIN_URL"
        )
    token: str | None = None
    if args.token_file:
        token = _read_token(Path(args.token_file))
    elif os.environ.get("CRYPTORUN_ADMIN_TOKEN"):
        token = os.environ["CRYPTORUN_ADMIN_TOKEN"].strip()
    elif config is not None:
        # The operator's token: the CLI's commands are operator and read calls.
        path = config.admin.tokens.operator_file or config.admin.token_file
        token = _read_token(path) if path is not None else None
    peers = dict(config.peers) if config is not None else {}
    return AdminTarget(
        url=url.rstrip("/"), token=token, peers=peers, ssl_context=_ssl_context(args, config)
    )


def _ssl_context(args: argparse.Namespace, config: Config | None) -> ssl.SSLContext | None:
    """The context verifying an https daemon: ``--cacert``, env, then the config's peer CA.

    Under mutual TLS the config's ``[peers] cert``/``key`` (this region's
    certificate) is presented; it grants no scope by itself, the token does.
    """
    ca_text = getattr(args, "cacert", None) or os.environ.get("CRYPTORUN_ADMIN_CA")
    ca = Path(ca_text) if ca_text else None
    cert = key = None
    if config is not None:
        ca = ca or config.peer_tls.ca_file
        cert, key = config.peer_tls.cert, config.peer_tls.key
    if ca is None and cert is None:
        return None
    try:
        return client_context(ca, cert=cert, key=key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS files for the admin client: {exc}") from None


def _read_token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read token file {path}: {exc.strerror}") from None
