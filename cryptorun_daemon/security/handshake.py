"""Counting TLS handshakes the admin listener refuses (plaintext clients, bad client certificates).

asyncio's SSL transport drops a failed handshake without telling anyone
(``SSLError`` is logged only in debug mode). The standard library lets a
context choose the class of its ``SSLObject`` (``SSLContext.sslobject_class``);
:func:`count_refusals` sets a subclass whose ``do_handshake`` counts each
failure by reason before re-raising it. Each handshake runs on its own
connection in the event loop, so a client that sends garbage or stops half
way through holds only its own connection.
"""

from __future__ import annotations

import ssl
from typing import Literal

from cryptorun_daemon.metrics import Metrics

TLSRefusalReason = Literal["plaintext", "client_certificate", "handshake"]

# OpenSSL's reason codes for a client that spoke HTTP (or anything but TLS) to a TLS port.
_PLAINTEXT = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER"})
_CLIENT_CERTIFICATE = frozenset(
    {"CERTIFICATE_VERIFY_FAILED", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED"}
)


def classify_refusal(exc: ssl.SSLError) -> TLSRefusalReason:
    reason = exc.reason or ""
    if reason in _PLAINTEXT:
        return "plaintext"
    if reason in _CLIENT_CERTIFICATE or isinstance(exc, ssl.SSLCertVerificationError):
        return "client_certificate"
    return "handshake"


def count_refusals(context: ssl.SSLContext, metrics: Metrics) -> None:
    """Make every failed server handshake on ``context`` count in
    ``cryptorun_admin_tls_refused_total{reason}``."""
    counter = metrics.admin_tls_refused_total

    class CountingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # more bytes needed: the handshake is still under way
            except ssl.SSLError as exc:
                counter.labels(reason=classify_refusal(exc)).inc()
                raise

    context.sslobject_class = CountingSSLObject
