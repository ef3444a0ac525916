"""An HTTP fault proxy in front of the test S3 server: answers 500/503/SlowDown or stalls.

The TCP relay of ``tests/harness/net.py`` breaks connections; an object store
fails differently — it answers, with an S3 error document and a status, or it
stops answering. :class:`S3FaultProxy` is a real HTTP server on loopback that
forwards every request unchanged (method, path, query, headers, body; SigV4
signs the ``Host`` the client used, which is kept) to the real server, except
the requests a test has armed a fault for::

    async with S3FaultProxy(server.endpoint) as proxy:
        proxy.fail("PUT", times=2, status=503, code="SlowDown")
        proxy.stall("GET", times=1, seconds=5)   # answers nothing for 5 s
        proxy.strip_conditions = True            # a store without conditional writes

Resource handling: ``async with`` starts and stops the server and its client
session; a stalled handler is cancelled when the proxy closes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp import web

# Hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1), plus the length
# aiohttp recomputes.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class _Fault:
    method: str
    times: int
    status: int = 503
    code: str = "SlowDown"
    stall: float = 0.0


class S3FaultProxy:
    """A forwarding HTTP proxy with armed faults (see the module docstring)."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = 0
        self.faults: list[_Fault] = []
        #: Faults injected so far, by ``(method, status or "stall")``.
        self.injected: Counter[tuple[str, str]] = Counter()
        self.forwarded = 0
        #: Every request seen: ``(method, path and query, header names in lower case)``.
        self.seen: list[tuple[str, str, frozenset[str]]] = []
        #: True: drop If-None-Match / If-Match before forwarding (a store without
        #: conditional writes, as seen by the client).
        self.strip_conditions = False
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, method: str, *, times: int, status: int = 503, code: str = "SlowDown") -> None:
        """The next ``times`` ``method`` requests get ``status`` with S3 error ``code``."""
        self.faults.append(_Fault(method, times, status=status, code=code))

    def stall(self, method: str, *, times: int, seconds: float) -> None:
        """The next ``times`` ``method`` requests get no answer for ``seconds`` (then 503)."""
        self.faults.append(_Fault(method, times, stall=seconds))

    def _take(self, method: str) -> _Fault | None:
        for fault in self.faults:
            if fault.method == method and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            (request.method, str(request.rel_url), frozenset(k.lower() for k in request.headers))
        )
        body = await request.read()
        fault = self._take(request.method)
        if fault is not None:
            if fault.stall:
                self.injected[(request.method, "stall")] += 1
                await asyncio.sleep(fault.stall)
            else:
                self.injected[(request.method, str(fault.status))] += 1
            document = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{fault.code}</Code><Message>injected by the test</Message>"
                "<RequestId>fault</RequestId></Error>"
            )
            return web.Response(status=fault.status, text=document, content_type="application/xml")
        assert self._session is not None
        dropped = _HOP | ({"if-none-match", "if-match"} if self.strip_conditions else set())
        headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
        async with self._session.request(
            request.method,
            f"{self.target}{request.rel_url}",
            headers=headers,
            data=body,
            allow_redirects=False,
            auto_decompress=False,
        ) as upstream:
            payload = await upstream.read()
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in _HOP and k.lower() != "content-length"
            }
            self.forwarded += 1
            return web.Response(status=upstream.status, body=payload, headers=out)

    async def __aenter__(self) -> S3FaultProxy:
        # Keep the client's Host header: the request is signed with it.
        self._session = aiohttp.ClientSession(skip_auto_headers=("Content-Type",))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through it
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
