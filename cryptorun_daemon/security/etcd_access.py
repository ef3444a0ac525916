"""How this region reaches etcd: the TLS context and the user, from ``[state]``.

``etcd_ca_file`` verifies etcd's certificate (the system store when unset);
``etcd_cert``/``etcd_key`` answer etcd's ``--client-cert-auth``;
``etcd_user``/``etcd_password_file`` log in when etcd has ``auth enable``.

Error handling: :class:`ConfigError` (exit 2) when a file does not load or
the password file is not private (see :func:`read_secret`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from cryptorun_daemon.config import Config
from cryptorun_daemon.errors import ConfigError, ConfigProblem
from cryptorun_daemon.security.secret_files import read_secret
from cryptorun_daemon.security.tls import client_context


@dataclass(frozen=True)
class EtcdAccess:
    ssl_context: ssl.SSLContext | None
    user: str | None
    password: str | None


def etcd_access(config: Config) -> EtcdAccess:
    """The context (None when no endpoint is https and no TLS file is set) and credentials."""
    state = config.state
    context = None
    uses_tls = any(url.startswith("https://") for url in state.etcd_endpoints)
    if uses_tls or state.etcd_ca_file is not None or state.etcd_cert is not None:
        try:
            context = client_context(state.etcd_ca_file, cert=state.etcd_cert, key=state.etcd_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [ConfigProblem(str(config.source), "state", f"cannot load etcd TLS files: {exc}")]
            ) from exc
    password = None
    if state.etcd_password_file is not None:
        password = read_secret(
            state.etcd_password_file, source=str(config.source), key="state.etcd_password_file"
        )
    return EtcdAccess(ssl_context=context, user=state.etcd_user, password=password)
