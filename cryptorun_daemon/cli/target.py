"""Which daemon a ``replication`` command talks to, and with which token."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.config import load_config
from cryptorun_daemon.errors import UsageError


@dataclass(frozen=True)
class AdminTarget:
    url: str
    token: str | None
    peers: dict[str, str]


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
        url = f"http://{host}:{config.admin.port}"
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
    elif config is not None and config.admin.token_file is not None:
        token = _read_token(config.admin.token_file)
    peers = dict(config.peers) if config is not None else {}
    return AdminTarget(url=url.rstrip("/"), token=token, peers=peers)


def _read_token(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read token file {path}: {exc.strerror}") from None
