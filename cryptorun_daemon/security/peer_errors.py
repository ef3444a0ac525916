"""Counting failed calls to peers by reason, for every peer call in one place.

Every outgoing peer call (health probe, status read, failover notification,
partition listing and fetch, the hot stream's WebSocket) goes through the
daemon's one ``aiohttp.ClientSession``; :meth:`PeerErrors.trace_config` hooks
that session's ``on_request_exception`` signal, so a failure is counted once,
whichever subsystem made the call, as ``cryptorun_peer_errors_total{peer,
reason}`` and in ``/v1/status`` (``peers_health.<peer>.errors``).

``reason="tls"``: the peer's certificate failed verification (unknown CA,
expired, wrong name) or the handshake failed. Nothing retries such a call
over plaintext: the URL's scheme is the only thing that picks TLS.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Literal

import aiohttp
from yarl import URL

from cryptorun_daemon.metrics import Metrics

PeerErrorReason = Literal["tls", "connect", "timeout", "protocol"]


def classify(exc: BaseException) -> PeerErrorReason:
    """The bounded reason for one failed peer call."""
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    return "protocol"


class PeerErrors:
    """Failed peer calls, per peer and reason: the metric plus counts for status.

    Invariant: ``_counts`` has one entry per configured peer, created at
    construction; URLs that belong to no peer (etcd, say) are not counted.
    """

    def __init__(self, metrics: Metrics, peers: Mapping[str, str]) -> None:
        self._metrics = metrics
        self._origins = {URL(url).origin(): peer for peer, url in peers.items()}
        self._counts: dict[str, dict[str, int]] = {peer: {} for peer in peers}

    def peer_for(self, url: URL) -> str | None:
        """The peer whose base URL has the same scheme, host and port as ``url``."""
        try:
            origin = url.origin()
        except ValueError:
            return None
        if origin.scheme in ("ws", "wss"):
            origin = origin.with_scheme("https" if origin.scheme == "wss" else "http")
        return self._origins.get(origin)

    def record(self, peer: str, exc: BaseException) -> PeerErrorReason:
        reason = classify(exc)
        counts = self._counts.setdefault(peer, {})
        counts[reason] = counts.get(reason, 0) + 1
        self._metrics.peer_errors_total.labels(peer=peer, reason=reason).inc()
        return reason

    def counts(self, peer: str) -> dict[str, int]:
        """Reason → failed calls so far (a copy; reasons never seen are absent)."""
        return dict(self._counts.get(peer, {}))

    def trace_config(self) -> aiohttp.TraceConfig:
        """A trace config counting every failed request of the session it is given to."""

        async def on_exception(
            _session: aiohttp.ClientSession,
            _ctx: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            peer = self.peer_for(params.url)
            if peer is not None:
                self.record(peer, params.exception)

        trace = aiohttp.TraceConfig()
        trace.on_request_exception.append(on_exception)
        return trace
