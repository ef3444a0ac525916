"""Who may call what: the bearer tokens per scope and the peers identified by certificate.

Three scopes (docs/API.md has the endpoint table):

* ``operator`` — failover, seal, simulate, sync; also reads (an operator
  needs ``cryptorun status``);
* ``peer`` — what another region calls: the hot stream, partition listing
  and fetch, failover notifications, ``/v1/status`` (epoch comparison);
* ``read`` — status, metrics and partition reads for people and Prometheus.

``[admin] token_file`` (the contract's one shared token) grants all three, so
configs written before scopes existed run unchanged. Under mutual TLS a
verified client certificate whose subject CN is a configured peer region
grants ``peer``.

Error handling: :func:`load_credentials` raises one :class:`ConfigError`
naming every secret file that is missing, empty or readable by group or
others (exit 2), like ssh with a private key. The secrets themselves never
appear in a message, a log line or status.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.config import Config
from cryptorun_daemon.config.model import SCOPES, Scope
from cryptorun_daemon.errors import ConfigError, ConfigProblem
from cryptorun_daemon.security.secret_files import check_private, read_secret

#: What each kind of token grants.
_LEGACY_SCOPES: frozenset[Scope] = frozenset(SCOPES)
_FILE_SCOPES: dict[Scope, frozenset[Scope]] = {
    "operator": frozenset({"operator", "read"}),
    "peer": frozenset({"peer"}),
    "read": frozenset({"read"}),
}


@dataclass(frozen=True)
class Credentials:
    """The tokens this daemon accepts, the token it presents to peers, its peer regions.

    Invariant: ``tokens`` holds each accepted token once with the union of
    the scopes every file holding it grants.
    """

    tokens: tuple[tuple[bytes, frozenset[Scope]], ...] = ()
    peer_token: str | None = None
    peer_regions: frozenset[str] = frozenset()
    mutual_tls: bool = False

    @property
    def open(self) -> bool:
        """No token and no client certificates: every route is open (loopback only)."""
        return not self.tokens and not self.mutual_tls

    def scopes_for_token(self, presented: str) -> frozenset[Scope] | None:
        """The scopes ``presented`` grants, or None when it matches no token.

        Compares against every token with :func:`hmac.compare_digest` and
        never stops early, so the time taken says nothing about which token
        (or how much of one) matched.
        """
        candidate = presented.encode()
        granted: frozenset[Scope] | None = None
        for token, scopes in self.tokens:
            if hmac.compare_digest(candidate, token):
                granted = scopes
        return granted

    def scopes_for_peer(self, identity: str | None) -> frozenset[Scope]:
        """``peer`` for a verified client certificate naming a configured peer region."""
        if identity is not None and identity in self.peer_regions:
            return frozenset({"peer"})
        return frozenset()

    def peer_headers(self) -> dict[str, str]:
        """The ``Authorization`` header presented on every call to a peer."""
        return {"Authorization": f"Bearer {self.peer_token}"} if self.peer_token else {}


def load_credentials(config: Config) -> Credentials:
    """Read every token file and check every private key of ``config``.

    Error handling: one :class:`ConfigError` listing every problem (see the
    module docstring).
    """
    source = str(config.source)
    problems: list[ConfigProblem] = []
    found: dict[str, set[Scope]] = {}

    def read(path: Path, key: str) -> str | None:
        try:
            return read_secret(path, source=source, key=key)
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None

    admin = config.admin
    legacy = read(admin.token_file, "admin.token_file") if admin.token_file else None
    if legacy is not None:
        found.setdefault(legacy, set()).update(_LEGACY_SCOPES)
    by_scope: dict[Scope, str] = {}
    for scope, path in admin.tokens.by_scope().items():
        token = read(path, f"admin.tokens.{scope}_file")
        if token is not None:
            by_scope[scope] = token
            found.setdefault(token, set()).update(_FILE_SCOPES[scope])
    private_keys: list[tuple[Path | None, str]] = [
        (admin.tls_key, "admin.tls_key"),
        (config.peer_tls.key, "peers.key"),
        (config.state.etcd_key, "state.etcd_key"),
        (config.state.etcd_password_file, "state.etcd_password_file"),
    ]
    for secret, key in private_keys:
        if secret is not None:
            problem = check_private(secret, source=source, key=key)
            if problem is not None:
                problems.append(problem)
    if problems:
        raise ConfigError(problems)
    return Credentials(
        tokens=tuple((token.encode(), frozenset(scopes)) for token, scopes in found.items()),
        peer_token=by_scope.get("peer", legacy),
        peer_regions=frozenset(config.peers),
        mutual_tls=admin.tls_client_ca is not None,
    )
