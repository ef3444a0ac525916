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

import json
import ssl
from typing import Any

import aiohttp

from cryptorun_daemon.errors import AdminClientError


class AdminClient:
    """Talks JSON to one daemon's admin API.

    Error handling: network failures, timeouts, non-JSON replies and 4xx/5xx
    answers all raise :class:`AdminClientError` whose message names the URL and
    the daemon's ``error``/``detail``. Resource handling: use as an async
    context manager; the session is closed on exit.
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
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=self._ssl),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON body of a 2xx answer."""
        if self._session is None:
            raise RuntimeError("AdminClient used outside 'async with'")
        url = f"{self.base_url}{path}"
        try:
            async with self._session.request(method, url, params=params, json=body) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise AdminClientError(f"cannot reach daemon at {self.base_url}: {reason}") from exc
        try:
            payload = json.loads(text) if text else {}
        except json.JSONDecodeError:
            raise AdminClientError(
                f"{method} {url} answered {status} with a non-JSON body", status=status
            ) from None
        if status >= 400:
            error = payload.get("error", "error") if isinstance(payload, dict) else "error"
            detail = payload.get("detail", text) if isinstance(payload, dict) else text
            raise AdminClientError(
                f"{method} {path} refused ({status} {error}): {detail}", status=status, error=error
            )
        return payload
