"""JSON error bodies for every admin API failure (never an HTML traceback)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from cryptorun_daemon.errors import (
    ConflictError,
    CryptorunError,
    FencedError,
    PathRejectedError,
    StateStoreError,
    UsageError,
)

log = structlog.get_logger("cryptorun.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_BY_ERROR: tuple[tuple[type[CryptorunError], int], ...] = (
    (UsageError, 400),
    (PathRejectedError, 400),
    (FencedError, 409),
    (ConflictError, 409),
    # The coordination store is unreachable or unreadable: retry later, like not-ready.
    (StateStoreError, 503),
)
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    416: "range_not_satisfiable",
    501: "not_implemented",
    503: "not_ready",
}


def json_error(status: int, code: str, detail: str) -> web.Response:
    """The contract's error body ``{"error": code, "detail": detail}``."""
    return web.json_response({"error": code, "detail": detail}, status=status)


def status_for(error: CryptorunError) -> int:
    for kind, status in _STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into a JSON error; unexpected ones are logged as 500.

    aiohttp's own HTTP exceptions (404 for unknown routes, 405, 413 for bodies
    over ``client_max_size``) keep their status but get a JSON body.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODE_BY_STATUS.get(exc.status, "error")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.path}"
        return json_error(exc.status, code, detail or exc.reason)
    except CryptorunError as exc:
        status = status_for(exc)
        if status == 500:
            log.error("request failed", path=request.path, exc_info=True)
        return json_error(status, exc.code, str(exc))
    except Exception:
        log.error("unhandled error in admin handler", path=request.path, exc_info=True)
        return json_error(500, "internal", "internal error; see the daemon log")
