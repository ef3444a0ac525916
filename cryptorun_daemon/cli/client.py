"""The CLI's HTTP client for a daemon's admin API.

Resolution order for where to connect: ``--admin-url`` flag, then
``CRYPTORUN_ADMIN_URL``, then the ``admin.listen`` of ``--config``. The token:
``--token-file``, then ``CRYPTORUN_ADMIN_TOKEN``, then the config's
operator token (``admin.tokens.operator_file``, else ``admin.token_file``).
An ``https://`` daemon is verified against ``--cacert``/``CRYPTORUN_ADMIN_CA``
or the config's ``[peers] ca_file``; under mutual TLS the config's
``[peers] cert``/``key`` are presented (see :mod:`cryptorun_daemon.cli.target`).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptorun_daemon.errors import AdminClientError


class AdminClient:
    """Talks JSON to one daemon's admin API.

    The standard library's ``http.client`` does the talking, in a worker
    thread: an operator command is one or a few small requests, and importing
    an async HTTP stack (with the default TLS contexts it builds at import)
    cost the CLI more start-up time than the requests themselves.

    Error handling: network failures, timeouts, non-JSON replies and 4xx/5xx
    answers all raise :class:`AdminClientError` whose message names the URL and
    the daemon's ``error``/``detail``. Resource handling: use as an async
    context manager; the connection (kept alive between requests) is closed
    on exit.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._timeout = timeout
        self._ssl = ssl_context
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdminClientError(f"admin URL {base_url!r} is not http(s)://host:port")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        # One request at a time on the kept-alive connection.
        self._lock = threading.Lock()
        self._entered = False

    async def __aenter__(self) -> AdminClient:
        self._entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._entered = False
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                context = self._ssl if self._ssl is not None else ssl.create_default_context()
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def _send(self, method: str, target: str, payload: bytes | None) -> tuple[int, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if payload is not None:
            headers["Content-Type"] = "application/json"
        with self._lock:
            conn = self._connection()
            try:
                conn.request(method, target, body=payload, headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode("utf-8", errors="replace")
            except BaseException:
                conn.close()  # a half-used connection is never reused
                self._conn = None
                raise
            return resp.status, text

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON body of a 2xx answer."""
        if not self._entered:
            raise RuntimeError("AdminClient used outside 'async with'")
        url = f"{self.base_url}{path}"
        target = f"{self._prefix}{path}" + (f"?{urlencode(params)}" if params else "")
        payload = json.dumps(body).encode() if body is not None else None
        try:
            status, text = await asyncio.to_thread(self._send, method, target, payload)
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
            raise AdminClientError(f"cannot reach daemon at {self.base_url}: {reason}") from exc
        try:
            payload_doc = json.loads(text) if text else {}
        except json.JSONDecodeError:
            raise AdminClientError(
                f"{method} {url} answered {status} with a non-JSON body", status=status
            ) from None
        if status >= 400:
            doc = payload_doc if isinstance(payload_doc, dict) else {}
            error = doc.get("error", "error")
            detail = doc.get("detail", text)
            raise AdminClientError(
                f"{method} {path} refused ({status} {error}): {detail}", status=status, error=error
            )
        return payload_doc
