"""Lifecycle of the admin HTTP server (aiohttp ``AppRunner`` + ``TCPSite``).

The daemon owns signal handling, so the runner is created with
``handle_signals=False``. With an ``ssl_context`` the listener speaks only
TLS; the context object is the one :class:`~cryptorun_daemon.security.tls.ServerTLS`
reloads in place, so a certificate swap never closes the listener.
"""

from __future__ import annotations

import ssl

import structlog
from aiohttp import web

log = structlog.get_logger("cryptorun.admin")


class AdminServer:
    """Binds the admin app and shuts it down in order.

    Resource handling: :meth:`start` binds the listening socket (port 0 picks
    a free port, readable from :attr:`port`); :meth:`stop_accepting` closes it
    without touching open connections; :meth:`close` waits for in-flight
    requests up to ``shutdown_timeout`` (or the time it is given) and then
    tears everything down.
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        shutdown_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._app = app
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout
        )
        self._site: web.TCPSite | None = None
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner,
            self._host,
            self._port,
            reuse_address=True,
            ssl_context=self._ssl_context,
        )
        await self._site.start()
        # With port 0 the OS picks the port; the runner knows the bound address.
        for address in self._runner.addresses:
            self.port = int(address[1])
            break
        log.info(
            "admin server listening",
            host=self._host,
            port=self.port,
            tls=self._ssl_context is not None,
        )

    async def stop_accepting(self) -> None:
        """Close the listening socket; existing connections continue."""
        if self._site is not None:
            # TCPSite.stop() would also shut the app down; closing only the
            # listener keeps in-flight requests and WebSockets alive until close().
            server = self._site._server
            if server is not None:
                server.close()

    async def close(self, in_flight_timeout: float | None = None) -> None:
        """Run aiohttp's shutdown (on_shutdown hooks close WebSockets), then cleanup.

        ``in_flight_timeout`` (default: the constructor's ``shutdown_timeout``)
        bounds the wait for requests still being handled; the daemon passes
        what is left of its one shutdown deadline.
        """
        if in_flight_timeout is not None:
            # aiohttp reads the runner's timeout when cleanup() shuts the server
            # down; it has no public setter, and the daemon only knows how much
            # of its deadline is left at this point, not at construction.
            self._runner._shutdown_timeout = max(0.0, in_flight_timeout)
        await self._runner.shutdown()
        await self._runner.cleanup()
