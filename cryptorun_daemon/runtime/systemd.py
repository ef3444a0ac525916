"""systemd's notify protocol (sd_notify) without a dependency.

The protocol is one datagram per message to the unix socket named in
``NOTIFY_SOCKET``; a leading ``@`` means the Linux abstract namespace (the
``@`` becomes a NUL byte). When the variable is unset every call is a no-op,
so the daemon behaves the same outside systemd.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger("cryptorun.systemd")


class SystemdNotifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1`` and ``STOPPING=1``.

    Error handling: a send failure is logged once and never raised — losing a
    status line must not take the daemon down (systemd's watchdog will notice a
    truly stuck daemon on its own). Resource handling: one datagram socket,
    closed by :meth:`close`.
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if address:
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # systemd recommends pinging at half the timeout.
        self.watchdog_interval: float | None = int(usec) / 2e6 if watchdog_for_us else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("systemd notify failed", error=str(exc))
                self._warned = True

    def ready(self) -> None:
        self.notify("READY=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
