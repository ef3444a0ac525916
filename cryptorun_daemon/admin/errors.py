"""JSON error bodies for every admin API failure (never an HTML traceback)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from cryptorun_daemon.errors import CryptorunError

log = structlog.get_logger("cryptorun.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Codes for aiohttp's own HTTP exceptions (unknown route, wrong method, body too
# large...), which cannot carry our ``code``. Our errors carry theirs
# (``CryptorunError.code`` / ``http_status``) and never pass through this table.
_CODE_FOR_AIOHTTP_STATUS = {
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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into a JSON error; unexpected ones are logged as 500.

    A :class:`CryptorunError` answers with its own ``http_status`` and
    ``code``. aiohttp's own HTTP exceptions (404 for unknown routes, 405, 413
    for bodies over ``client_max_size``) keep their status but get a JSON body.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODE_FOR_AIOHTTP_STATUS.get(exc.status, "error")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.path}"
        return json_error(exc.status, code, detail or exc.reason)
    except CryptorunError as exc:
        if exc.http_status == 500:
            # Not a refusal the error explains to the client: a bug or an unexpected state.
            log.error("request failed", path=request.path, exc_info=True)
        return json_error(exc.http_status, exc.code, str(exc))
    except Exception:
        log.error("unhandled error in admin handler", path=request.path, exc_info=True)
        return json_error(500, "internal", "internal error; see the daemon log")
