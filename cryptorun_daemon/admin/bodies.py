"""Reading request bodies the same way on every admin endpoint."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cryptorun_daemon.errors import UsageError


async def json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object.

    Error handling: raises :class:`UsageError` (400) when the body is not JSON
    or not an object; with ``allow_empty`` a request without a body is ``{}``.
    """
    if allow_empty and not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise UsageError("request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise UsageError("request body must be a JSON object")
    return body
