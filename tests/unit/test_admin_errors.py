"""Admin API errors answer with the status and code their own class carries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cryptorun_daemon import errors
from cryptorun_daemon.admin.errors import error_middleware
from cryptorun_daemon.errors import CryptorunError


class TeapotError(CryptorunError):
    """An error class the admin layer has never heard of."""

    code = "teapot"
    http_status = 418


def _every_error_class() -> list[type[CryptorunError]]:
    found: list[type[CryptorunError]] = []
    pending: list[type[CryptorunError]] = [CryptorunError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == errors.__name__]


def _instance(cls: type[CryptorunError]) -> CryptorunError:
    if cls is errors.ConfigError:
        return errors.ConfigError([errors.ConfigProblem("f.toml", "k", "bad")])
    if cls is errors.ReplicationError:
        return errors.ReplicationError("boom", reason="test")
    if cls is errors.WriteRefusedError:
        return errors.WriteRefusedError("boom", reason="lease_expiring")
    if cls is errors.SchemaDriftError:
        return errors.SchemaDriftError("boom", fingerprints=("xxh3_128:a", "xxh3_128:b"))
    if cls is errors.JournalDamagedError:
        return errors.JournalDamagedError("journal/0000000001.jsonl", 42, "not JSON")
    return cls("boom")


@pytest.fixture
async def raising_server() -> AsyncIterator[tuple[str, dict[str, CryptorunError]]]:
    """A real admin-style app on loopback whose ``/raise/{name}`` raises that error."""
    to_raise: dict[str, CryptorunError] = {}

    async def handler(request: web.Request) -> web.Response:
        raise to_raise[request.match_info["name"]]

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/raise/{name}", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/raise/")), to_raise
    finally:
        await server.close()


async def test_every_error_answers_with_its_own_status_and_code(
    raising_server: tuple[str, dict[str, CryptorunError]],
) -> None:
    """Each error class in cryptorun_daemon.errors, and a subclass defined elsewhere, answers
    with the http_status and code it carries: the middleware keeps no table of its own."""
    base, to_raise = raising_server
    classes = [*_every_error_class(), TeapotError]
    for cls in classes:
        to_raise[cls.__name__] = _instance(cls)
    async with aiohttp.ClientSession() as http:
        for cls in classes:
            async with http.get(base + cls.__name__) as resp:
                body = await resp.json()
                error = to_raise[cls.__name__]
                assert (resp.status, body) == (
                    error.http_status,
                    {"error": error.code, "detail": str(error)},
                ), cls


def test_statuses_clients_depend_on_are_kept() -> None:
    """The statuses and codes the API reference promises stay as they were; a seal refusal
    is its own 503 ``seal_refused`` (retry later), distinct from a fenced seal's 409."""
    table = {
        cls.__name__: (cls.http_status, cls.code)
        for cls in (
            errors.UsageError,
            errors.PathRejectedError,
            errors.ConflictError,
            errors.FencedError,
            errors.StateStoreError,
            errors.SealRefusedError,
            errors.WriteRefusedError,
            errors.StorageError,
        )
    }
    assert table == {
        "UsageError": (400, "bad_request"),
        "PathRejectedError": (400, "bad_path"),
        "ConflictError": (409, "conflict"),
        "FencedError": (409, "fenced"),
        "StateStoreError": (503, "state_store"),
        "SealRefusedError": (503, "seal_refused"),
        "WriteRefusedError": (503, "write_refused"),
        "StorageError": (500, "storage"),
    }
