"""Who may call which admin route: a route → scope table and the middleware enforcing it.

Scopes are ``operator``, ``peer`` and ``read`` (see
:mod:`cryptorun_daemon.security.credentials` for what grants each). A route
missing from :data:`ROUTE_SCOPES` (one a later subsystem adds) needs
``operator``, so a new route is protected by default. ``/healthz`` and
``/readyz`` are always open; ``/metrics`` and ``/v1/status`` are open when
``admin.open_reads`` (loopback listeners only).

Answers: 401 ``unauthorized`` when no credential was presented or a token is
wrong; 403 ``forbidden`` when the credential is valid but lacks the scope.
Both carry the JSON error body and never echo the presented token.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from cryptorun_daemon.admin.errors import Handler, json_error
from cryptorun_daemon.config.model import Scope
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.security.credentials import Credentials
from cryptorun_daemon.security.tls import peer_identity

OPEN: Final[frozenset[Scope]] = frozenset()
_READ: Final[frozenset[Scope]] = frozenset({"read"})

#: (method, route pattern) → the scopes any one of which opens it (HEAD follows GET).
ROUTE_SCOPES: Final[dict[tuple[str, str], frozenset[Scope]]] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): _READ,
    ("GET", "/v1/status"): frozenset({"read", "peer"}),
    ("GET", "/v1/partitions"): frozenset({"read", "peer"}),
    ("GET", "/v1/partitions/{tier}/{path}"): frozenset({"read", "peer"}),
    ("GET", "/v1/hot/stream"): frozenset({"peer"}),
    ("GET", "/v1/read"): _READ,
    ("POST", "/v1/failover/notify"): frozenset({"peer"}),
    ("POST", "/v1/failover"): frozenset({"operator"}),
    ("POST", "/v1/partitions/seal"): frozenset({"operator"}),
    ("POST", "/v1/replication/simulate"): frozenset({"operator"}),
    ("POST", "/v1/replication/sync"): frozenset({"operator"}),
}
_DEFAULT: Final[frozenset[Scope]] = frozenset({"operator"})
#: The routes ``admin.open_reads`` opens.
OPEN_READ_ROUTES: Final = frozenset({("GET", "/metrics"), ("GET", "/v1/status")})


def required_scopes(method: str, pattern: str) -> frozenset[Scope]:
    """The scopes that open ``method pattern`` (empty: open to all)."""
    method = "GET" if method == "HEAD" else method
    return ROUTE_SCOPES.get((method, pattern), _DEFAULT)


def _route_key(request: web.Request) -> tuple[str, str]:
    method = "GET" if request.method == "HEAD" else request.method
    resource = request.match_info.route.resource
    return method, resource.canonical if resource is not None else request.path


def auth_middleware(credentials: Credentials, metrics: Metrics, *, open_reads: bool) -> Middleware:
    """Enforce :data:`ROUTE_SCOPES` with bearer tokens and verified client certificates.

    With no credential configured at all (no token, no client CA: allowed on
    loopback only) every route is open, which the daemon logs loudly at
    start-up.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:
            # No such route (404/405): nothing to protect, and the caller deserves
            # to learn the path is wrong rather than that the credential is.
            return await handler(request)
        key = _route_key(request)
        needed = required_scopes(*key)
        if not needed or credentials.open or (open_reads and key in OPEN_READ_ROUTES):
            return await handler(request)
        granted: set[Scope] = set()
        transport = request.transport
        if transport is not None:
            identity = peer_identity(transport.get_extra_info("peercert"))
            granted |= credentials.scopes_for_peer(identity)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if header:
            scopes = (
                credentials.scopes_for_token(presented.strip())
                if scheme.lower() == "bearer" and presented.strip()
                else None
            )
            if scopes is None:
                metrics.admin_rejected_total.labels(reason="bad_token").inc()
                return json_error(401, "unauthorized", "wrong bearer token")
            granted |= scopes
        elif not granted:
            metrics.admin_rejected_total.labels(reason="no_token").inc()
            return json_error(
                401,
                "unauthorized",
                "missing credential: send 'Authorization: Bearer <token>'"
                + (" or a peer region's client certificate" if credentials.mutual_tls else ""),
            )
        if not granted & needed:
            metrics.admin_rejected_total.labels(reason="forbidden").inc()
            return json_error(
                403,
                "forbidden",
                f"{key[0]} {key[1]} needs the {' or '.join(sorted(needed))} scope; "
                f"this credential has {', '.join(sorted(granted))}",
            )
        return await handler(request)

    return middleware
