"""Bearer-token authentication for mutating and peer endpoints.

Only the endpoints the contract marks ``auth: none`` are public; every other
route (including ones later subsystems add) requires the token, so a new route
is protected by default.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from cryptorun_daemon.admin.errors import Handler, json_error
from cryptorun_daemon.metrics import Metrics

PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v1/status"),
        ("HEAD", "/metrics"),
        ("HEAD", "/healthz"),
        ("HEAD", "/readyz"),
    }
)


def bearer_middleware(token: str | None, metrics: Metrics) -> Middleware:
    """Require ``Authorization: Bearer <token>`` on non-public routes.

    With no token configured (allowed on loopback only; config validation
    refuses a non-loopback listen address without one) every route is open,
    which the daemon logs loudly at start-up.
    """
    expected = token.encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or (request.method, request.path) in PUBLIC_ROUTES:
            return await handler(request)
        if request.match_info.http_exception is not None:
            # No such route (404/405): nothing to protect, and the caller deserves
            # to learn the path is wrong rather than that the token is.
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            metrics.admin_rejected_total.labels(reason="no_token").inc()
            return json_error(401, "unauthorized", "missing 'Authorization: Bearer <token>'")
        # compare_digest: the time taken must not reveal how much of the token matched.
        if not hmac.compare_digest(presented.strip().encode(), expected):
            metrics.admin_rejected_total.labels(reason="bad_token").inc()
            return json_error(401, "unauthorized", "wrong bearer token")
        return await handler(request)

    return middleware
