"""The aiohttp application: built-in routes plus every component's routes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cryptorun_daemon.admin.auth import auth_middleware
from cryptorun_daemon.admin.errors import Handler, error_middleware, json_error
from cryptorun_daemon.config import TIERS
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.security.credentials import Credentials


class DaemonView(Protocol):
    """What the built-in routes need from the daemon (keeps admin/ free of daemon.py)."""

    metrics: Metrics

    def is_alive(self) -> bool: ...

    def not_ready_reasons(self) -> list[str]: ...

    def write_refusals(self) -> dict[str, str]: ...

    def known_regions(self) -> Sequence[str]: ...

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]: ...


def build_app(
    daemon: DaemonView,
    *,
    credentials: Credentials,
    open_reads: bool,
    max_request_bytes: int,
    extra_routes: Sequence[web.RouteDef] = (),
) -> web.Application:
    """Create the admin app. Error middleware is outermost so auth failures are JSON too."""

    @web.middleware
    async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        # aiohttp enforces client_max_size only when a handler reads the body;
        # refusing on Content-Length up front keeps every route equally protected.
        if request.content_length is not None and request.content_length > max_request_bytes:
            daemon.metrics.admin_rejected_total.labels(reason="too_large").inc()
            return json_error(
                413,
                "too_large",
                f"request body of {request.content_length} bytes exceeds the "
                f"{max_request_bytes}-byte limit (admin.max_request_bytes)",
            )
        return await handler(request)

    app = web.Application(
        middlewares=[
            error_middleware,
            body_limit,
            auth_middleware(credentials, daemon.metrics, open_reads=open_reads),
        ],
        client_max_size=max_request_bytes,
    )

    async def metrics(_: web.Request) -> web.Response:
        # Rendering grows with the label sets (50 kB, 20-200 ms on a loaded host); off the
        # loop it no longer delays lease renewals (prometheus_client copies under its locks).
        body = await asyncio.to_thread(daemon.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if daemon.is_alive():
            return web.json_response({"status": "ok"})
        return json_error(503, "not_alive", "the supervisor loop has stopped ticking")

    async def readyz(_: web.Request) -> web.Response:
        reasons = daemon.not_ready_reasons()
        if reasons:
            return web.json_response({"status": "not_ready", "reasons": reasons}, status=503)
        # Ready (reads, replication and the hot mirror go on) yet maybe not
        # writing: say which tiers this region holds as primary but does not seal.
        return web.json_response(
            {"status": "ready", "reasons": [], "write_refusals": daemon.write_refusals()}
        )

    async def status(request: web.Request) -> web.Response:
        tier = request.query.get("tier") or None
        region = request.query.get("region") or None
        if tier is not None and tier not in TIERS:
            return json_error(400, "bad_request", f"tier {tier!r} is not one of {', '.join(TIERS)}")
        if region is not None and region not in daemon.known_regions():
            known = ", ".join(daemon.known_regions())
            return json_error(400, "bad_request", f"region {region!r} is unknown (known: {known})")
        return web.json_response(daemon.status(tier=tier, region=region))

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/status", status)
    app.add_routes(extra_routes)
    return app
